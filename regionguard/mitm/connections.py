"""The addon that enforces the policy on proxied connections: decides each one and pins it to
a checked address, or blocks it.

Where each decision is made (mitmproxy 12.3):
- explicit proxy CONNECT (regular/upstream modes): `http_connect` resolves the name with the
  policy's resolver, decides every address, answers 403 or pins the CONNECT to a checked address;
- plain HTTP through an explicit proxy: `requestheaders`, the same way;
- everything else (transparent, WireGuard, local, SOCKS5, reverse, and UDP): `server_connect`,
  by the original destination address (plus the SNI when mitmproxy knows it); a name is resolved
  and pinned. Setting `server.error` there kills the connection before anything is sent.
mitmproxy logs and swallows addon exceptions, which would let traffic through: every hook is
wrapped so an internal error blocks Zoom endpoints and leaves other traffic alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import mode_specs, server_hooks

from regionguard.core.decision import Action
from regionguard.core.prefixes import is_address
from regionguard.mitm.connection_state import (
    client_state,
    forget_client,
    peek_client_state,
    server_verdict,
    set_server_verdict,
)
from regionguard.mitm.enforce import Enforcer, Verdict, plain_address
from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.verdicts import block_response, fail_closed, mark, record
from regionguard.probe.tcp import Prober, kernel_rtt_ms

log = logging.getLogger("regionguard")

EXPLICIT_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode)
BLOCKED_TARGET = "blocked.regionguard.invalid"   # RFC 6761: no resolver ever answers .invalid


class ConnectionEnforcer:
    name = "regionguard_connections"

    def __init__(self, policy: PolicyLoader) -> None:
        self.policy = policy
        self._enforcer: Enforcer | None = None
        self.prober = Prober()   # evidence.rtt: probe (kept across policy reloads: its counts)
        # Read on every connection, so copied here by configure(): reading ctx.options
        # deep-copies the value each time.
        self._audit_pass = False

    # --- hooks --------------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if self.policy.not_enforcing() is None:   # only options the policy addon accepted
            self._audit_pass = ctx.options.regionguard_audit_pass

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Explicit proxy CONNECT: decide the name, answer 403 or pin the tunnel."""
        await self._failing_closed(flow, self._decide_request(flow, "http_connect"))

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Plain HTTP through the explicit proxy: decide it like a CONNECT."""
        await self._failing_closed(flow, self._requestheaders(flow))

    async def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        """mitmproxy is about to send the upstream proxy a CONNECT. A client's own CONNECT was
        pinned to its checked address in `http_connect`; an absolute-form `GET https://NAME/`
        reaches here with the name, which the upstream proxy would resolve itself, landing
        anywhere: send the checked address instead (the TLS server name and the Host header
        inside the tunnel stay the name), or a target that cannot connect."""
        try:
            await self._connect_upstream(flow)
        except Exception as e:  # noqa: BLE001 - never let a failing hook open the gate
            req = flow.request
            if fail_closed(self.policy.holder, req.host, None, req.port, "tcp", None, e) is not None:
                _retarget_connect(flow.request, BLOCKED_TARGET, 9)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Every mode: the server connection, pinned to what was decided or decided now."""
        try:
            await self._server_connect(data)
        except Exception as e:  # noqa: BLE001 - never let a failing hook open the gate
            address = data.server.address[0] if data.server.address else None
            port = data.server.address[1] if data.server.address else 0
            if fail_closed(self.policy.holder, data.server.sni, address, port,
                           data.server.transport_protocol, None, e) is not None:
                data.server.error = f"regionguard: internal error, fail closed: {e!r}"

    def tcp_start(self, flow: Any) -> None:
        """Show the verdict of the server connection on its TCP (or UDP) flow."""
        verdict = server_verdict(flow.server_conn)
        if verdict is not None:
            mark(flow, verdict)

    udp_start = tcp_start

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """evidence.rtt (passive or probe): the connect mitmproxy just made is a round trip
        measured for free (its SYN to its SYN-ACK): keep it. No packet is added."""
        holder = self.policy.holder
        engine = holder.engine if holder is not None else None
        if engine is None or engine.rtt is None:
            return
        server = data.server
        start, setup = server.timestamp_start, server.timestamp_tcp_setup
        if start is None or setup is None or not server.peername:
            return
        try:
            # the kernel's own timing of the SYN round trip when the socket can be reached,
            # else mitmproxy's timestamps around its connect (which add an event-loop wake-up)
            rtt = self._kernel_rtt(data) or (setup - start) * 1000
            client = data.client.peername[0] if data.client.peername else None
            engine.observe_rtt(plain_address(client), plain_address(server.peername[0]) or "",
                               rtt, "passive")
        except Exception:  # noqa: BLE001 - a measurement must never break a connection
            log.exception("regionguard: RTT not recorded")

    def _kernel_rtt(self, data: server_hooks.ServerConnectionHookData) -> float | None:
        """TCP_INFO of the server connection's socket, found through mitmproxy's proxyserver
        addon (its connection handlers keep the streams). Not a public API: None whenever the
        path is not there, and the timestamps serve."""
        try:
            proxyserver = ctx.master.addons.get("proxyserver")
            handler = proxyserver.connections.get(data.client.id)
            io = handler.transports.get(data.server) if handler is not None else None
            sock = io.writer.get_extra_info("socket") if io is not None else None
        except AttributeError:
            return None
        return kernel_rtt_ms(sock) if sock is not None else None

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        set_server_verdict(data.server, None)

    server_connect_error = server_disconnected

    def client_disconnected(self, client: Any) -> None:
        forget_client(client)

    # --- explicit proxy: CONNECT and plain HTTP -------------------------------------------------

    def _current_enforcer(self) -> Enforcer:
        # A method, not a property: mitmproxy inspects addon attributes when loading them.
        engine = self.policy.holder.engine  # type: ignore[union-attr]
        if self._enforcer is None or self._enforcer.engine is not engine:
            self._enforcer = Enforcer(engine, prober=self.prober)
        return self._enforcer

    def _record(self, verdict: Verdict, client: Any, via: str) -> None:
        record(self.policy.audit, verdict, client, via, self._audit_pass)

    async def _failing_closed(self, flow: http.HTTPFlow, deciding: Awaitable[None]) -> None:
        try:
            await deciding
        except Exception as e:  # noqa: BLE001 - never let a failing hook open the gate
            req = flow.request
            verdict = fail_closed(self.policy.holder, req.host, None, req.port, "tcp", None, e)
            if verdict is not None:
                flow.response = block_response(verdict)

    async def _requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return   # answered already: the guard, or the PAC file
        if not isinstance(flow.client_conn.proxy_mode, EXPLICIT_MODES):
            return   # other modes were decided by address in server_connect
        if flow.request.method == "CONNECT":
            return   # decided in http_connect
        if flow.request.scheme == "https" and flow.client_conn.tls_established:
            # A request inside an intercepted CONNECT tunnel, decided at its CONNECT. (An
            # absolute-form `GET https://…` reaches the proxy in plain text: decided here.)
            return
        server = flow.server_conn
        if server_verdict(server) is not None and server.address == (flow.request.host, flow.request.port):
            return   # plain HTTP inside a CONNECT tunnel: its connection was decided already
        await self._decide_request(flow, "requestheaders")

    async def _decide_request(self, flow: http.HTTPFlow, via: str) -> None:
        req = flow.request
        host, port = req.host, req.port
        holder = self.policy.holder
        engine = holder.engine if holder is not None else None
        state = client_state(flow.client_conn)
        if via == "requestheaders":
            hit = state.kept.get((host, port))
            if hit is not None and hit[0] is engine:
                # Keep-alive: this client connection already had this destination decided (and
                # audited) under the policy in force; the request rides the pinned connection.
                mark(flow, hit[1])
                pinned = _pin_request(flow, hit[1].address, port)  # type: ignore[arg-type]
                state.decided[(pinned, port)] = hit[1]
                return
        client = flow.client_conn.peername[0] if flow.client_conn.peername else None
        try:
            verdict = await self._current_enforcer().verdict(client, host, None, port, "tcp")
        except Exception as e:  # noqa: BLE001 - fail closed for Zoom
            failed = fail_closed(holder, host, None, port, "tcp", client, e)
            if failed is None:
                return
            verdict = failed
        self._record(verdict, flow.client_conn, via)
        mark(flow, verdict)
        if verdict.blocked:
            if verdict.decision.action is Action.PASS:   # not Zoom's, and no address to check
                flow.response = http.Response.make(
                    502, f"regionguard: {verdict.decision.reason}\n".encode(),
                    {"Content-Type": "text/plain; charset=utf-8"})
            else:
                flow.response = block_response(verdict)
            return
        pinned = _pin_request(flow, verdict.address, port)  # type: ignore[arg-type]
        state.decided[(pinned, port)] = verdict
        if via == "requestheaders":
            state.kept[(host, port)] = (engine, verdict)

    # --- upstream mode: the CONNECT sent to the upstream proxy ----------------------------------

    async def _connect_upstream(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host, port = req.host, req.port
        if is_address(host):
            return   # an address: the client's CONNECT or request was decided by it already
        state = peek_client_state(flow.client_conn)
        verdict = state.decided.pop((host, port), None) if state else None
        if verdict is None:   # not seen at the HTTP level (should not happen): decide it now
            peer = flow.client_conn.peername
            verdict = await self._current_enforcer().verdict(peer[0] if peer else None, host,
                                                             None, port, "tcp")
            self._record(verdict, flow.client_conn, "http_connect_upstream")
        if verdict.blocked:
            log.warning("regionguard: upstream CONNECT to %s:%s blocked", host, port)
            _retarget_connect(req, BLOCKED_TARGET, 9)
            return
        _retarget_connect(req, verdict.address, port)  # type: ignore[arg-type]

    # --- every mode: the server connection ----------------------------------------------------

    async def _server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, client = data.server, data.client
        if server.error or not server.address:
            return
        dest, port = server.address[0], server.address[1]
        transport = server.transport_protocol
        state = peek_client_state(client)
        pre = state.decided.pop((dest, port), None) if state else None
        if pre is not None:
            if dest != pre.address:   # absolute-form https, decided by name: pin the address
                server.address = (pre.address, port)
            set_server_verdict(server, pre)
            return
        mode = client.proxy_mode
        if isinstance(mode, mode_specs.UpstreamMode) and tuple(server.address) == tuple(mode.address):
            return   # the upstream proxy itself; CONNECTs through it were pinned in http_connect
        client_ip = client.peername[0] if client.peername else None
        if is_address(dest):
            host, address = server.sni, dest
        else:
            host, address = dest, None
        try:
            verdict = await self._current_enforcer().verdict(client_ip, host, address, port, transport)
        except Exception as e:  # noqa: BLE001 - fail closed for Zoom
            failed = fail_closed(self.policy.holder, host, address, port, transport, client_ip, e)
            if failed is None:
                return
            verdict = failed
        self._record(verdict, client, "server_connect")
        if verdict.blocked:
            d = verdict.decision
            server.error = (f"regionguard: blocked {d.host or ''} {d.address or ''}:{port} "
                            f"(region {d.region or 'unknown'}, rule {d.rule}): {d.reason}")
            return
        if host and not server.sni and not is_address(host):
            server.sni = host
        server.address = (verdict.address, port)
        set_server_verdict(server, verdict)


def _pin_request(flow: http.HTTPFlow, address: str, port: int) -> str:
    """Send this request to the checked address; return the host its server connection will
    have in `server_connect`, which finds the verdict under it.

    `data.host` leaves the Host header (the name the server sees) unchanged; an upstream
    proxy gets the absolute-form target, so it is named the checked address there too. An
    absolute-form https request keeps its host: mitmproxy takes the TLS server name (and the
    name the certificate must match) from it, so `server_connect` pins the address instead."""
    req = flow.request
    if req.scheme == "https" and req.method != "CONNECT":
        if isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode):
            # It goes to the origin through a CONNECT (to the checked address: see
            # http_connect_upstream): origin-form there, as mitmproxy sends it in regular
            # mode; the Host header keeps the name.
            req.authority = ""
        return req.host
    req.data.host = address
    if req.authority and isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode):
        req.authority = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return address


def _retarget_connect(req: http.Request, host: str, port: int) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    req.data.host, req.data.port = host, port
    req.authority = authority
    if "Host" in req.headers:
        req.headers["Host"] = authority
