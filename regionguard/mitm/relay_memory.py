"""The addon that keeps relayed TCP and UDP flows from growing without bound.

mitmproxy keeps every message of a TCP or UDP flow (`flow.messages`) for the flow's whole life,
for its UI and for saving flows. A gateway (WireGuard, transparent or local mode) relays Zoom's
media and signalling for hours: one participant's hour of meeting UDP is hundreds of megabytes,
held until the flow ends. regionguard decides a connection once, before anything is relayed, and
no hook of its own reads past messages; so after each message a flow keeps only that last one
(the one mitmproxy's own display reads), unless flows are being saved (`save_stream_file`, `-w`),
which needs them all.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx


class RelayMemory:
    name = "regionguard_relay_memory"

    def __init__(self) -> None:
        self.keep_all = False

    def configure(self, updated: set[str]) -> None:
        if "save_stream_file" in updated:
            self.keep_all = bool(getattr(ctx.options, "save_stream_file", None))

    def tcp_message(self, flow: Any) -> None:
        if not self.keep_all and len(flow.messages) > 1:
            del flow.messages[:-1]

    udp_message = tcp_message
