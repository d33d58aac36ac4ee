"""The guard that blocks Zoom whenever regionguard's policy addon is not enforcing a policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import dns as mdns
from mitmproxy import http
from mitmproxy.proxy import server_hooks
from mitmproxy.tls import ClientHelloData

from regionguard.core.prefixes import is_address
from regionguard.core.zoom import ZoomCatalogue
from regionguard.mitm.enforce import plain_address

GUARD_NAME = "regionguard_guard"


class ZoomGuard:
    """Blocks Zoom whenever no policy addon of this script enforces a good configuration.

    It sits in mitmproxy's addon chain itself, not in the script's list, so it stays when the
    script is absent: unloaded, failed to reload after an edit, or never configured (bad
    options, bad policy). mitmproxy then has no addon that decides anything, and without this
    it would be a plain proxy. Zoom is known by the last good policy's `is_zoom`, else by the
    bundled catalogue (names and ranges); if even that cannot load, everything is blocked."""

    def __init__(self) -> None:
        self.name = GUARD_NAME
        self.enforcing: object | None = None   # the policy addon in force, if any
        self.problem = "regionguard is not loaded"
        self._is_zoom: Callable[[str | None, str | None], bool] | None = None

    def arm(self, addon: object, is_zoom: Callable[[str | None, str | None], bool]) -> None:
        self.enforcing, self._is_zoom = addon, is_zoom

    def disarm(self, addon: object, problem: str) -> None:
        if self.enforcing is addon or self.enforcing is None:
            self.enforcing, self.problem = None, problem

    def _zoom(self, host: str | None, address: str | None) -> bool:
        try:
            if self._is_zoom is None:
                catalogue = ZoomCatalogue.load()
                self._is_zoom = lambda h, a: catalogue.is_zoom_host(h) or catalogue.range_of(a) is not None
            if host and is_address(host):
                host, address = None, address or host
            return bool(self._is_zoom(host, plain_address(address)))
        except Exception:  # noqa: BLE001 - cannot tell: treat it as Zoom's
            return True

    def _why(self) -> str:
        return f"regionguard is not enforcing ({self.problem}): Zoom traffic is blocked"

    # --- hooks: each does nothing while a policy addon enforces --------------------------------

    def _refuse_request(self, flow: http.HTTPFlow) -> None:
        if self.enforcing is None and flow.response is None and self._zoom(flow.request.host, None):
            flow.response = http.Response.make(
                403, f"{self._why()}\n".encode(),
                {"Content-Type": "text/plain; charset=utf-8", "X-Regionguard-Rule": "not-enforcing",
                 "Connection": "close"})

    http_connect = _refuse_request
    requestheaders = _refuse_request

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if self.enforcing is not None or server.error or not server.address:
            return
        if self._zoom(server.sni, None) or self._zoom(server.address[0], None):
            server.error = self._why()

    def tls_clienthello(self, data: ClientHelloData) -> None:
        if self.enforcing is None:
            data.ignore_connection = True   # never intercept while nothing decides

    def dns_request(self, flow: Any) -> None:
        if self.enforcing is None and flow.response is None and any(
                self._zoom(str(q.name), None) for q in flow.request.questions):
            flow.response = flow.request.fail(mdns.response_codes.REFUSED)
