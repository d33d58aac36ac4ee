"""The addon that serves the PAC file (regionguard.mitm.pac) at the proxy's own address, so a
client configured with http://PROXY/proxy.pac sends only Zoom through the proxy."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import mode_specs

from regionguard.mitm.enforce import plain_address
from regionguard.mitm.gateway import hostport
from regionguard.mitm.pac import pac_text
from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.verdicts import block_response, fail_closed

log = logging.getLogger("regionguard")


class PacServer:
    name = "regionguard_pac"

    def __init__(self, policy: PolicyLoader) -> None:
        self.policy = policy
        self._path = "/proxy.pac"   # regionguard_pac_path, copied: read on every request
        self._cache: dict[str, bytes] = {}   # proxy HOST:PORT → PAC file, for `_cache_engine`
        self._cache_engine: Any = None

    def configure(self, updated: set[str]) -> None:
        if self.policy.not_enforcing() is None:   # only options the policy addon accepted
            self._path = ctx.options.regionguard_pac_path
            if "regionguard_pac_proxy" in updated:
                self._cache.clear()

    def running(self) -> None:
        if self.policy.not_enforcing() is None:
            self._announce()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Answer a GET for the PAC path on the proxy's own address with the PAC file."""
        if flow.response is not None:
            return
        try:
            self._serve(flow)
        except Exception as e:  # noqa: BLE001 - never let a failing hook open the gate
            req = flow.request
            verdict = fail_closed(self.policy.holder, req.host, None, req.port, "tcp", None, e)
            if verdict is not None:
                flow.response = block_response(verdict)

    def _serve(self, flow: http.HTTPFlow) -> None:
        path = self._path
        req = flow.request
        if not path or req.method != "GET" or req.path.split("?", 1)[0] != path:
            return
        sock = flow.client_conn.sockname
        if not sock or req.port != sock[1]:
            return
        own = {"localhost", plain_address(sock[0]), sock[0], "127.0.0.1", "::1"}
        if plain_address(req.host) not in own and req.host not in own:
            return
        proxy = ctx.options.regionguard_pac_proxy or hostport(req.host_header or req.host, req.port)
        engine = self.policy.holder.engine  # type: ignore[union-attr]
        if engine is not self._cache_engine:   # a new or reloaded policy: new overrides
            self._cache.clear()
            self._cache_engine = engine
        body = self._cache.get(proxy)
        if body is None:
            body = pac_text(engine.zoom, proxy, engine.policy.overrides).encode()
            self._cache[proxy] = body
        flow.response = http.Response.make(
            200, body, {"Content-Type": "application/x-ns-proxy-autoconfig", "Cache-Control": "no-cache"})

    @staticmethod
    def _announce() -> None:
        path = ctx.options.regionguard_pac_path
        for spec in ctx.options.mode if path else ():
            try:
                mode = mode_specs.ProxyMode.parse(spec)
            except ValueError:
                continue
            if isinstance(mode, mode_specs.RegularMode):
                host = mode.listen_host(ctx.options.listen_host) or "127.0.0.1"
                port = mode.listen_port(ctx.options.listen_port)
                if port:
                    host = f"[{host}]" if ":" in host else host
                    log.info("regionguard: PAC file (only Zoom through this proxy): http://%s:%s%s",
                             host, port, path)
