"""The addon that carries room-connector signalling as raw TCP: SIP (TCP 5060, 5061) and H.323
(TCP 1720), the ports config/zoom.yaml gives the `crc` service.

mitmproxy guesses a TCP connection's protocol from its first bytes, and takes a line such as
"INVITE sip:85746382910@zoomcrc.com SIP/2.0" (a verb, a space, a target) for HTTP: its HTTP
layer then rejects the request line and drops the call ("Bad HTTP request line"), an allowed
room connector included. Here such a connection is relayed as bytes instead, after the usual
decision in `server_connect` (the connections addon), so the region policy alone decides it. TLS
on these ports (SIP over TLS, 5061) is left to mitmproxy's TLS layer and the passthrough addon,
which never intercepts Zoom's.
"""

from __future__ import annotations

import logging

from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.layers.http import HttpLayer
from mitmproxy.proxy.layers.tls import starts_like_tls_record

from regionguard.mitm.policy_loader import PolicyLoader

log = logging.getLogger("regionguard")

SIGNALLING_SERVICE = "crc"


class RoomConnectorSignalling:
    name = "regionguard_signalling"

    def __init__(self, policy: PolicyLoader) -> None:
        self.policy = policy

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if context.client.transport_protocol != "tcp" or not context.server.address:
            return
        if nextlayer.layer is not None and not isinstance(nextlayer.layer, HttpLayer):
            return   # TLS, raw TCP, DNS...: mitmproxy's choice stands
        holder = self.policy.holder
        if holder is None:
            return   # no policy in force: the guard blocks Zoom, nothing to relay
        port = context.server.address[1]
        try:
            service = holder.engine.zoom.port_service("tcp", port)
        except Exception:  # noqa: BLE001 - a guess gone wrong must not stop the connection's decision
            log.exception("regionguard: next_layer")
            return
        if service != SIGNALLING_SERVICE:
            return
        data = nextlayer.data_client()
        if data and starts_like_tls_record(data):
            return
        nextlayer.layer = layers.TCPLayer(context)
