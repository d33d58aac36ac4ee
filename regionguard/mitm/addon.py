"""regionguard as a mitmproxy 12 addon: enforce the Zoom region policy on every connection.

    mitmdump -s addons/regionguard_addon.py --set regionguard_policy=config/policy.yaml

Where each decision is made (mitmproxy 12.3):
- explicit proxy CONNECT (regular/upstream modes): `http_connect` resolves the name with the
  policy's resolver, decides every address, answers 403 or pins the CONNECT to a checked address;
- plain HTTP through an explicit proxy: `requestheaders`, the same way;
- everything else (transparent, WireGuard, local, SOCKS5, reverse, and UDP): `server_connect`,
  by the original destination address (plus the SNI when mitmproxy knows it); a name is resolved
  and pinned. Setting `server.error` there kills the connection before anything is sent.
mitmproxy logs and swallows addon exceptions, which would let traffic through: every hook is
wrapped so an internal error blocks Zoom endpoints and leaves other traffic alone.
Zoom TLS is never intercepted (no CA needed on clients); see the option regionguard_intercept.
"""

from __future__ import annotations

import asyncio
import html
import importlib
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy import dns as mdns
from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.tls import ClientHelloData

from regionguard.audit.log import AuditLog, check_audit_path, timestamp
from regionguard.core.decision import Action, Decision
from regionguard.core.errors import ConfigError
from regionguard.core.learned import open_state
from regionguard.core.paths import default_policy_path
from regionguard.core.prefixes import is_address
from regionguard.core.reload import EngineHolder
from regionguard.core.zoom import ZoomCatalogue
from regionguard.mitm.enforce import Enforcer, Verdict, plain_address
from regionguard.mitm.options import OPTIONS, PREFIX, OptionProblem, check_values, parse_value
from regionguard.mitm.pac import pac_text

log = logging.getLogger("regionguard")

EXPLICIT_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode)
_MARKS = {Action.BLOCK: ":no_entry:", Action.REROUTE: ":twisted_rightwards_arrows:",
          Action.MONITOR: ":eyes:", Action.ALLOW: ":white_check_mark:"}


def _header(value: Any) -> str:
    """A header-safe rendering (latin-1, one line, bounded)."""
    text = "" if value is None else str(value)
    return text.encode("latin-1", "replace").decode("latin-1").replace("\r", " ").replace("\n", " ")[:300]


def block_response(verdict: Verdict) -> http.Response:
    """The 403 page for a blocked CONNECT or request: short, human-readable, headers for scripts."""
    d = verdict.decision
    where = f"{d.host or d.address}" + (f" ({d.address})" if d.host and d.address else "")
    body = (
        "<!doctype html><title>Blocked by regionguard</title>"
        f"<h1>Blocked by regionguard</h1><p>{html.escape(where)} is blocked by your Zoom region "
        f"policy.</p><p>Region: {html.escape(d.region or 'unknown')}. Rule: "
        f"{html.escape(d.rule)}.</p><p>{html.escape(d.reason)}</p>\n"
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "X-Regionguard-Action": _header(d.action),
        "X-Regionguard-Host": _header(d.host),
        "X-Regionguard-Address": _header(d.address),
        "X-Regionguard-Region": _header(d.region or "unknown"),
        "X-Regionguard-Rule": _header(d.rule),
        "X-Regionguard-Reason": _header(d.reason),
        "X-Regionguard-Policy": _header(d.policy_version),
        "Connection": "close",
    }
    return http.Response.make(403, body.encode(), headers)


def _mode_name(client: Any) -> str:
    mode = getattr(client, "proxy_mode", None)
    return getattr(mode, "type_name", "") or ""


GUARD_NAME = "regionguard_guard"
BLOCKED_TARGET = "blocked.regionguard.invalid"   # RFC 6761: no resolver ever answers .invalid
REFUSED_REPORT_EVERY = 60.0   # seconds between reports of one refused client address
REFUSED_TRACKED = 4096        # refused addresses remembered for that


class ZoomGuard:
    """Blocks Zoom whenever no RegionGuard of this script enforces a good configuration.

    It sits in mitmproxy's addon chain itself, not in this script's list, so it stays when the
    script is absent: unloaded, failed to reload after an edit, or never configured (bad
    options, bad policy). mitmproxy then has no addon that decides anything, and without this
    it would be a plain proxy. Zoom is known by the last good policy's `is_zoom`, else by the
    bundled catalogue (names and ranges); if even that cannot load, everything is blocked."""

    def __init__(self) -> None:
        self.name = GUARD_NAME
        self.enforcing: object | None = None   # the RegionGuard in force, if any
        self.problem = "regionguard is not loaded"
        self._is_zoom: Any = None

    def arm(self, addon: object, is_zoom: Any) -> None:
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


class RegionGuard:
    def __init__(self) -> None:
        self.holder: EngineHolder | None = None
        self._enforcer: Enforcer | None = None
        self.audit = AuditLog(None)
        # client id → {(host, port): verdict} decided at the HTTP level, so `server_connect`
        # pins without deciding (and auditing) the same connection twice. By client, so a
        # disconnect drops its entries without a scan of everyone's.
        self._decided: dict[str, dict[tuple[str, int], Verdict]] = {}
        self._by_server: dict[str, Verdict] = {}
        # client id → {(host, port): (engine, verdict)}: plain-HTTP destinations allowed on a
        # keep-alive client connection, decided once per connection like a CONNECT tunnel.
        self._kept: dict[str, dict[tuple[str, int], tuple[Any, Verdict]]] = {}
        self._reload_task: asyncio.Task | None = None
        self._pac_cache: dict[str, bytes] = {}
        self._running = False
        # Options read on every connection, copied here by configure(): reading ctx.options
        # deep-copies the value each time.
        self._audit_pass = False
        self._intercept = "none"
        self._pac_path = "/proxy.pac"
        self._bad_options: dict[str, str] = {}
        self.configured_once = False
        self._refused: dict[str, tuple[float, int]] = {}   # address → (last reported, since)
        self._guard = ZoomGuard()   # replaced by the one in mitmproxy's chain in load()
        self._learned: Any = None   # the LearnedStore; False: learning is off

    # --- options ------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        for option in OPTIONS:
            loader.add_option(option.name, option.kind, option.default, option.help,
                              choices=option.choices)
        # Reported by configure(), which mitmproxy calls next: at start-up its error makes
        # mitmproxy exit; where it cannot (a script reload), the guard keeps Zoom blocked.
        self._bad_options = self._take_bad_options(loader.master.options)
        guard = loader.master.addons.get(GUARD_NAME)
        if guard is None:
            guard = ZoomGuard()
            loader.master.addons.add(guard)
        self._guard = guard
        guard.disarm(self, "regionguard is loaded but not configured yet")

    @staticmethod
    def _take_bad_options(options: Any) -> dict[str, str]:
        """Check the values waiting for our options (`--set`, config.yaml) before mitmproxy
        converts them: a value it cannot convert makes it drop this whole script without a word,
        leaving a proxy with no policy. Bad ones are taken out and returned, name → problem."""
        bad = {}
        for name, raw in list(options.deferred.items()):
            if not name.startswith(PREFIX):
                continue
            try:
                parse_value(name, getattr(raw, "val", raw))
            except OptionProblem as e:
                bad[name] = str(e)
                del options.deferred[name]
        return bad

    def configure(self, updated: set[str]) -> None:
        self.configured_once = True
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if self._running:
                raise   # a live change (mitmweb, console): mitmproxy rejects it and says why
            # At startup an error log makes mitmproxy exit (code 1) with this message alone,
            # instead of a traceback around it. Until it does, the guard blocks Zoom.
            self._guard.disarm(self, str(e))
            log.error("regionguard: %s\nZoom traffic is blocked until this is fixed", e)

    def not_enforcing(self) -> str | None:
        """Why this addon is not enforcing a policy, or None when it is."""
        return None if self._guard.enforcing is self else self._guard.problem

    def _configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if self._running:   # a live change sets these options again: checked below
            for name in updated & self._bad_options.keys():
                del self._bad_options[name]
        if self._bad_options:
            raise exceptions.OptionsError("\n".join(self._bad_options.values()))
        problems = check_values({o.name: getattr(opts, o.name) for o in OPTIONS})
        if problems:
            raise exceptions.OptionsError("\n".join(problems))
        if "regionguard_policy" in updated or "regionguard_state_dir" in updated \
                or self.holder is None:
            path = Path(opts.regionguard_policy) if opts.regionguard_policy else default_policy_path()
            if self._learned is None or "regionguard_state_dir" in updated:
                if self._learned not in (None, False):
                    self._learned.close()
                self._learned = open_state(opts.regionguard_state_dir or None) or False
            try:
                holder = EngineHolder(path, self._learned or None)
            except ConfigError as e:
                raise exceptions.OptionsError(f"regionguard_policy: invalid policy:\n{e}") from None
            except OSError as e:
                raise exceptions.OptionsError(f"regionguard_policy: {path}: {e}") from None
            self.holder = holder
            self._enforcer = None
            self._pac_cache.clear()
            for w in holder.engine.policy.warnings:
                log.warning("regionguard: policy warning: %s", w)
            log.info("regionguard: policy %s (%s) in force", path, holder.engine.policy.version_id)
        if updated & {"regionguard_audit", "regionguard_audit_max_bytes",
                      "regionguard_audit_backups", "regionguard_audit_flush_ms"} \
                or self.audit.path is None and opts.regionguard_audit:
            unwritable = check_audit_path(opts.regionguard_audit, "regionguard_audit") \
                if opts.regionguard_audit else None
            if unwritable is not None:   # at start-up, not at the first lost line
                raise exceptions.OptionsError(str(unwritable))
            old = self.audit
            self.audit = AuditLog(opts.regionguard_audit or None, opts.regionguard_audit_max_bytes,
                                  opts.regionguard_audit_backups, counters=old.counters,
                                  flush_interval=opts.regionguard_audit_flush_ms / 1000)
            old.close()
        self._audit_pass = opts.regionguard_audit_pass
        self._intercept = opts.regionguard_intercept
        self._pac_path = opts.regionguard_pac_path
        if "regionguard_pac_proxy" in updated:
            self._pac_cache.clear()
        holder = self.holder
        self._guard.arm(self, lambda host, address: holder.engine.is_zoom(host, address))

    def running(self) -> None:
        self._running = True
        problem = self.not_enforcing()
        if problem is not None:
            log.error("regionguard: not enforcing (%s); Zoom traffic is blocked", problem)
            return
        self._warn_open_gateway()
        self._announce_pac()
        if self._reload_task is None and ctx.options.regionguard_reload > 0:
            self._reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

    def _warn_open_gateway(self) -> None:
        """Listening beyond loopback with no `gateway.clients`: anyone who reaches the address
        may use the proxy. Allowed (a lab), but said at start-up."""
        if self.holder is None or self.holder.engine.policy.gateway.restricted:
            return
        for host, port, name in _listen_addresses():
            if not _loopback_only(host):
                log.warning("regionguard: warning: %s listens on %s, beyond loopback, and the "
                            "policy has no gateway.clients: anyone who reaches it may use it; "
                            "list the client networks allowed in the policy's gateway.clients "
                            "(e.g. [10.0.0.0/8])", name, _hostport(host or "*", port))

    @staticmethod
    def _announce_pac() -> None:
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

    def done(self) -> None:
        self._guard.disarm(self, "regionguard was unloaded")
        if self._reload_task is not None:
            self._reload_task.cancel()
            self._reload_task = None
        self.audit.close()
        if self._learned:
            self._learned.close()   # writes what is still pending

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.regionguard_reload or 1)
            try:
                await self.check_policy()
            except Exception:  # noqa: BLE001 - a reload problem must not stop future reloads
                log.exception("regionguard: policy reload check failed")

    async def check_policy(self) -> None:
        holder = self.holder
        if holder is None:
            return
        before = holder.engine
        error = await holder.check_async()   # parsed off the event loop
        if error is not None:
            self.audit.write_raw({"time": timestamp(), "event": "policy-reload", "ok": False,
                                  "policy": str(holder.path), "error": str(error),
                                  "policy_version": before.policy.version_id})
        elif holder.engine is not before:
            self._pac_cache.clear()
            self.audit.write_raw({"time": timestamp(), "event": "policy-reload", "ok": True,
                                  "policy": str(holder.path),
                                  "policy_version": holder.engine.policy.version_id,
                                  "previous_version": before.policy.version_id})

    def _current_enforcer(self) -> Enforcer:
        # A method, not a property: mitmproxy inspects addon attributes when loading them.
        engine = self.holder.engine  # type: ignore[union-attr]
        if self._enforcer is None or self._enforcer.engine is not engine:
            self._enforcer = Enforcer(engine)
        return self._enforcer

    # --- audit and display --------------------------------------------------------------------

    def _record(self, verdict: Verdict, client: Any, via: str) -> None:
        d = verdict.decision
        if d.action is Action.PASS and not self._audit_pass:
            return
        if verdict.rerouted_to:
            self.audit.record(d, mode=_mode_name(client), front_end="mitmproxy", hook=via,
                              connect_to=verdict.address, rerouted_to=verdict.rerouted_to)
        else:
            self.audit.record(d, mode=_mode_name(client), front_end="mitmproxy", hook=via,
                              connect_to=verdict.address)
        if d.action is not Action.PASS and d.action is not Action.ALLOW:
            # Allowed connections are routine (the audit log has them; a log record per request
            # costs more than the decision); what enforcement changed is worth a line.
            level = logging.WARNING if verdict.blocked else logging.INFO
            log.log(level, "regionguard: %s %s %s %s:%s region %s [%s]%s", str(d.action).upper(),
                    d.transport, d.host or "-", d.address or "-", d.port, d.region or "unknown",
                    d.rule, f" → {verdict.rerouted_to}" if verdict.rerouted_to else "")

    @staticmethod
    def _mark(flow: Any, verdict: Verdict) -> None:
        d = verdict.decision
        if d.action is Action.PASS:
            return
        flow.marked = _MARKS.get(d.action, ":grey_question:")
        note = f"regionguard: {d.action} — region {d.region or 'unknown'}, rule {d.rule}: {d.reason}"
        if verdict.rerouted_to:
            note += f" (rerouted to {verdict.rerouted_to})"
        if d.action is Action.MONITOR and d.would:
            note += f" (would {d.would})"
        flow.comment = note

    def _fail_closed(self, host: str | None, address: str | None, port: int, transport: str,
                     client: str | None, error: Exception) -> Verdict | None:
        """The verdict after an internal error: block Zoom, leave everything else alone."""
        log.exception("regionguard: internal error deciding %s %s: fail closed for Zoom", host, address)
        try:
            engine = self.holder.engine  # type: ignore[union-attr]
            zoom = engine.is_zoom(host if host and not is_address(host) else None,
                                  plain_address(address or host))
            version = engine.policy.version_id
        except Exception:  # noqa: BLE001 - cannot even tell: block
            zoom, version = True, ""
        if not zoom:
            return None
        d = Decision(Action.BLOCK, "internal-error", f"internal error ({error!r}): fail closed",
                     True, host=host, address=address, port=port, transport=transport,
                     client=client, policy_version=version)
        return Verdict(d, None)

    # --- explicit proxy: CONNECT and plain HTTP -----------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await self._guarded_request(flow, "http_connect")

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        await self._guarded_request(flow, "requestheaders")

    async def _guarded_request(self, flow: http.HTTPFlow, via: str) -> None:
        try:
            if via == "http_connect":
                await self._decide_request(flow, via)
            else:
                await self._requestheaders(flow)
        except Exception as e:  # noqa: BLE001 - never let a failing hook open the gate
            req = flow.request
            verdict = self._fail_closed(req.host, None, req.port, "tcp", None, e)
            if verdict is not None:
                flow.response = block_response(verdict)

    async def _requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if self._serve_pac(flow):
            return
        if not isinstance(flow.client_conn.proxy_mode, EXPLICIT_MODES):
            return   # other modes were decided by address in server_connect
        if flow.request.method == "CONNECT":
            return   # decided in http_connect
        if flow.request.scheme == "https" and flow.client_conn.tls_established:
            # A request inside an intercepted CONNECT tunnel, decided at its CONNECT. (An
            # absolute-form `GET https://…` reaches the proxy in plain text: decided here.)
            return
        server = flow.server_conn
        if server.id in self._by_server and server.address == (flow.request.host, flow.request.port):
            return   # plain HTTP inside a CONNECT tunnel: its connection was decided already
        await self._decide_request(flow, "requestheaders")

    async def _decide_request(self, flow: http.HTTPFlow, via: str) -> None:
        req = flow.request
        host, port = req.host, req.port
        engine = self.holder.engine if self.holder is not None else None
        kept = self._kept.get(flow.client_conn.id) if via == "requestheaders" else None
        if kept is not None:
            hit = kept.get((host, port))
            if hit is not None and hit[0] is engine:
                # Keep-alive: this client connection already had this destination decided (and
                # audited) under the policy in force; the request rides the pinned connection.
                self._mark(flow, hit[1])
                pinned = self._pin_request(flow, hit[1].address, port)
                self._decided.setdefault(flow.client_conn.id, {})[(pinned, port)] = hit[1]
                return
        client = flow.client_conn.peername[0] if flow.client_conn.peername else None
        try:
            verdict = await self._current_enforcer().verdict(client, host, None, port, "tcp")
        except Exception as e:  # noqa: BLE001 - fail closed for Zoom
            verdict = self._fail_closed(host, None, port, "tcp", client, e)
            if verdict is None:
                return
        self._record(verdict, flow.client_conn, via)
        self._mark(flow, verdict)
        if verdict.blocked:
            if verdict.decision.action is Action.PASS:   # not Zoom's, and no address to check
                flow.response = http.Response.make(
                    502, f"regionguard: {verdict.decision.reason}\n".encode(),
                    {"Content-Type": "text/plain; charset=utf-8"})
            else:
                flow.response = block_response(verdict)
            return
        pinned = self._pin_request(flow, verdict.address, port)
        self._decided.setdefault(flow.client_conn.id, {})[(pinned, port)] = verdict
        if via == "requestheaders":
            self._kept.setdefault(flow.client_conn.id, {})[(host, port)] = (engine, verdict)

    @staticmethod
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

    # --- upstream mode: the CONNECT sent to the upstream proxy ----------------------------------

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
            if self._fail_closed(req.host, None, req.port, "tcp", None, e) is not None:
                self._retarget_connect(flow.request, BLOCKED_TARGET, 9)

    async def _connect_upstream(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host, port = req.host, req.port
        if is_address(host):
            return   # an address: the client's CONNECT or request was decided by it already
        decided = self._decided.get(flow.client_conn.id)
        verdict = decided.pop((host, port), None) if decided else None
        if verdict is None:   # not seen at the HTTP level (should not happen): decide it now
            peer = flow.client_conn.peername
            verdict = await self._current_enforcer().verdict(peer[0] if peer else None, host,
                                                             None, port, "tcp")
            self._record(verdict, flow.client_conn, "http_connect_upstream")
        if verdict.blocked:
            log.warning("regionguard: upstream CONNECT to %s:%s blocked", host, port)
            self._retarget_connect(req, BLOCKED_TARGET, 9)
            return
        self._retarget_connect(req, verdict.address, port)

    @staticmethod
    def _retarget_connect(req: http.Request, host: str, port: int) -> None:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        req.data.host, req.data.port = host, port
        req.authority = authority
        if "Host" in req.headers:
            req.headers["Host"] = authority

    # --- every mode: the server connection ----------------------------------------------------

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        try:
            await self._server_connect(data)
        except Exception as e:  # noqa: BLE001 - never let a failing hook open the gate
            address = data.server.address[0] if data.server.address else None
            port = data.server.address[1] if data.server.address else 0
            if self._fail_closed(data.server.sni, address, port, data.server.transport_protocol,
                                 None, e) is not None:
                data.server.error = f"regionguard: internal error, fail closed: {e!r}"

    async def _server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, client = data.server, data.client
        if server.error or not server.address:
            return
        dest, port = server.address[0], server.address[1]
        transport = server.transport_protocol
        decided = self._decided.get(client.id)
        pre = decided.pop((dest, port), None) if decided else None
        if pre is not None:
            if dest != pre.address:   # absolute-form https, decided by name: pin the address
                server.address = (pre.address, port)
            self._by_server[server.id] = pre
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
            verdict = self._fail_closed(host, address, port, transport, client_ip, e)
            if verdict is None:
                return
        self._record(verdict, client, "server_connect")
        if verdict.blocked:
            d = verdict.decision
            server.error = (f"regionguard: blocked {d.host or ''} {d.address or ''}:{port} "
                            f"(region {d.region or 'unknown'}, rule {d.rule}): {d.reason}")
            return
        if host and not server.sni and not is_address(host):
            server.sni = host
        server.address = (verdict.address, port)
        self._by_server[server.id] = verdict

    # --- gateway: who may use the proxy ---------------------------------------------------------

    def client_connected(self, client: Any) -> None:
        """Refuse a client outside the policy's `gateway.clients` before it sends anything."""
        holder = self.holder
        if holder is None:
            return   # not enforcing: the guard blocks Zoom for everyone
        peer = client.peername[0] if client.peername else None
        try:
            allowed = holder.engine.policy.gateway.client_allowed(peer)
        except Exception:  # noqa: BLE001 - cannot tell: refuse
            log.exception("regionguard: client check failed for %s: refused", peer)
            allowed = False
        if allowed:
            return
        client.error = f"regionguard: client {peer} is not in the policy's gateway.clients"
        self._report_refused(peer, client, holder.engine.policy.version_id)

    def _report_refused(self, peer: str | None, client: Any, version: str) -> None:
        """One log and audit line per refused address per REFUSED_REPORT_EVERY seconds, with the
        count refused since: a client that hammers the proxy cannot flood the log."""
        now = time.monotonic()
        key = peer or "?"
        last, count = self._refused.get(key, (0.0, 0))
        if last and now - last < REFUSED_REPORT_EVERY:
            self._refused[key] = (last, count + 1)
            return
        if key not in self._refused and len(self._refused) >= REFUSED_TRACKED:
            self._refused.clear()   # bounded memory: forget, at worst report some again
        self._refused[key] = (now, 0)
        log.warning("regionguard: refused client %s (not in gateway.clients)%s", key,
                    f"; {count} more refused since the last report" if count else "")
        self.audit.write_raw({"time": timestamp(), "event": "client-refused", "client": peer,
                              "mode": _mode_name(client), "front_end": "mitmproxy",
                              "refused_since_last_report": count, "policy_version": version})

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._by_server.pop(data.server.id, None)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._by_server.pop(data.server.id, None)

    def client_disconnected(self, client: Any) -> None:
        self._kept.pop(client.id, None)
        self._decided.pop(client.id, None)

    def tcp_start(self, flow: Any) -> None:
        verdict = self._by_server.get(flow.server_conn.id)
        if verdict is not None:
            self._mark(flow, verdict)

    udp_start = tcp_start

    # --- TLS: never intercept Zoom ------------------------------------------------------------

    def tls_clienthello(self, data: ClientHelloData) -> None:
        choice = self._intercept
        if choice == "all":
            return
        if choice == "none":
            data.ignore_connection = True
            return
        try:
            server = data.context.server
            sni = data.client_hello.sni
            address = server.address[0] if server.address else None
            engine = self.holder.engine  # type: ignore[union-attr]
            zoom = engine.is_zoom(sni, None) or engine.is_zoom(
                address if address and not is_address(address) else None,
                plain_address(address) if address and is_address(address) else None)
        except Exception:  # noqa: BLE001 - when unsure, do not intercept
            log.exception("regionguard: tls_clienthello")
            zoom = True
        if zoom:
            data.ignore_connection = True

    # --- PAC ----------------------------------------------------------------------------------

    def _serve_pac(self, flow: http.HTTPFlow) -> bool:
        path = self._pac_path
        req = flow.request
        if not path or req.method != "GET" or req.path.split("?", 1)[0] != path:
            return False
        sock = flow.client_conn.sockname
        if not sock or req.port != sock[1]:
            return False
        own = {"localhost", plain_address(sock[0]), sock[0], "127.0.0.1", "::1"}
        if plain_address(req.host) not in own and req.host not in own:
            return False
        proxy = ctx.options.regionguard_pac_proxy or _hostport(req.host_header or req.host, req.port)
        body = self._pac_cache.get(proxy)
        if body is None:
            body = pac_text(self.holder.engine.zoom, proxy, self.holder.engine.policy.overrides).encode()  # type: ignore[union-attr]
            self._pac_cache[proxy] = body
        flow.response = http.Response.make(
            200, body, {"Content-Type": "application/x-ns-proxy-autoconfig", "Cache-Control": "no-cache"})
        return True


def _listen_addresses() -> list[tuple[str, int, str]]:
    """(host, port, mode) for each mode that listens on a socket; host "" = every address."""
    out = []
    for spec in ctx.options.mode:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue
        if mode.type_name == "local":
            continue   # redirects local processes; listens on no address
        out.append((mode.listen_host(ctx.options.listen_host),
                    mode.listen_port(ctx.options.listen_port) or 0, mode.type_name))
    return out


def _loopback_only(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(plain_address(host) or "").is_loopback
    except ValueError:
        return False   # "" (every address) or a name: assume it reaches the network


def _hostport(host_header: str, port: int) -> str:
    if ":" in host_header and not host_header.startswith("[") and host_header.count(":") == 1:
        return host_header
    if host_header.startswith("[") and "]:" in host_header:
        return host_header
    if ":" in host_header:   # bare IPv6
        return f"[{host_header}]:{port}"
    return f"{host_header}:{port}"


class DnsFilterMissing:
    """Stands in for addons/dns_filter.py when it cannot be loaded. Without it, DNS through the
    proxy (DNS, WireGuard and local modes) would reach clients unfiltered, disallowed Zoom
    addresses included: every DNS query is refused instead, and the log says why."""

    name = "regionguard_dns_missing"

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self._said = False

    def dns_request(self, flow: Any) -> None:
        if not self._said:
            self._said = True
            log.error("regionguard: %s; every DNS query through the proxy is refused", self.problem)
        flow.response = flow.request.fail(mdns.response_codes.REFUSED)


def _dns_addons() -> list:
    """The DNS filter's addon (regionguard.mitm.dns_filter); when it cannot be loaded,
    DnsFilterMissing, which refuses DNS rather than relay it unfiltered."""
    try:
        module = importlib.import_module("regionguard.mitm.dns_filter")
    except Exception as e:  # noqa: BLE001 - a broken DNS addon must not take the proxy down
        log.exception("regionguard: regionguard.mitm.dns_filter failed to load")
        return [DnsFilterMissing(f"regionguard.mitm.dns_filter failed to load ({type(e).__name__}: {e})")]
    return module.make_addons()


def make_addons() -> list:
    """A fresh set of the proxy's addons, in mitmproxy's order: the policy, then DNS."""
    return [RegionGuard(), *_dns_addons()]
