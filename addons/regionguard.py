"""regionguard as a mitmproxy 12 addon: enforce the Zoom region policy on every connection.

    mitmdump -s addons/regionguard.py --set regionguard_policy=config/policy.yaml

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
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.tls import ClientHelloData


def _import_package() -> None:
    """Import the regionguard package, not this file: mitmproxy puts this script's directory on
    sys.path, where `regionguard` would name the script itself."""
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        importlib.import_module("regionguard.enforce")
    finally:
        sys.path[:] = saved


_import_package()

from regionguard._paths import default_policy_path  # noqa: E402
from regionguard.audit import AuditLog, check_audit_path, timestamp  # noqa: E402
from regionguard.decision import Action, Decision  # noqa: E402
from regionguard.enforce import Enforcer, Verdict, plain_address  # noqa: E402
from regionguard.errors import ConfigError  # noqa: E402
from regionguard.pac import pac_text  # noqa: E402
from regionguard.policy import parse_hostport  # noqa: E402
from regionguard.prefixes import is_address  # noqa: E402
from regionguard.reload import EngineHolder  # noqa: E402

log = logging.getLogger("regionguard")

INTERCEPT_CHOICES = ("none", "non-zoom", "all")
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

    # --- options ------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option("regionguard_policy", str, "",
                          f"Region policy YAML file (default: {default_policy_path()}).")
        loader.add_option("regionguard_audit", str, "",
                          "Audit log: one JSON line per decision appended here (empty: off).")
        loader.add_option("regionguard_audit_max_bytes", int, 50 * 1024 * 1024,
                          "Rotate the audit log when it would grow beyond this many bytes.")
        loader.add_option("regionguard_audit_backups", int, 5,
                          "Rotated audit logs to keep (FILE.1 … FILE.N).")
        loader.add_option("regionguard_audit_flush_ms", int, 250,
                          "Write queued audit lines every this many milliseconds, from a thread "
                          "(written at exit too); 0: write each line before the connection "
                          "goes on.")
        loader.add_option("regionguard_audit_pass", bool, False,
                          "Also audit connections that are not Zoom's (action pass).")
        loader.add_option("regionguard_intercept", str, "none",
                          "TLS interception: none (pass every TLS connection through; no CA "
                          "needed), non-zoom (mitmproxy's own behaviour for non-Zoom traffic; Zoom "
                          "always passes through), all. Enforcement never needs interception.",
                          choices=INTERCEPT_CHOICES)
        loader.add_option("regionguard_reload", int, 1,
                          "Check the policy file for changes every this many seconds (0: never).")
        loader.add_option("regionguard_pac_path", str, "/proxy.pac",
                          "Serve a PAC file (Zoom's domains through this proxy) at this path on "
                          "the proxy's own address (empty: off).")
        loader.add_option("regionguard_pac_proxy", str, "",
                          "HOST:PORT the PAC file names (default: the address the client reached).")

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if self._running:
                raise   # a live change (mitmweb, console): mitmproxy rejects it and says why
            # At startup an error log makes mitmproxy exit (code 1) with this message alone,
            # instead of a traceback around it.
            log.error("regionguard: %s", e)

    def _configure(self, updated: set[str]) -> None:
        opts = ctx.options
        # mitmproxy does not enforce `choices=` itself: check here, with the fix.
        if opts.regionguard_intercept not in INTERCEPT_CHOICES:
            raise exceptions.OptionsError(
                f"regionguard_intercept: {opts.regionguard_intercept!r} is not valid; "
                f"use one of {', '.join(INTERCEPT_CHOICES)}")
        if opts.regionguard_audit_max_bytes < 1024:
            raise exceptions.OptionsError(
                f"regionguard_audit_max_bytes: {opts.regionguard_audit_max_bytes} is too small; "
                "give at least 1024 (bytes)")
        if opts.regionguard_audit_backups < 0:
            raise exceptions.OptionsError("regionguard_audit_backups: must be 0 or more")
        if not 0 <= opts.regionguard_audit_flush_ms <= 60_000:
            raise exceptions.OptionsError(
                f"regionguard_audit_flush_ms: {opts.regionguard_audit_flush_ms} is out of range; "
                "give 0 (write every line at once) to 60000 milliseconds")
        if opts.regionguard_reload < 0:
            raise exceptions.OptionsError(
                f"regionguard_reload: {opts.regionguard_reload} is negative; give seconds, or 0 "
                "to never reload")
        if opts.regionguard_pac_path and not opts.regionguard_pac_path.startswith("/"):
            raise exceptions.OptionsError(
                f"regionguard_pac_path: {opts.regionguard_pac_path!r} must start with '/', "
                "e.g. /proxy.pac (or be empty to turn the PAC file off)")
        if opts.regionguard_pac_proxy and parse_hostport(opts.regionguard_pac_proxy, 0) is None:
                raise exceptions.OptionsError(
                    f"regionguard_pac_proxy: {opts.regionguard_pac_proxy!r} is not HOST:PORT, "
                    "e.g. 127.0.0.1:8080")
        if "regionguard_policy" in updated or self.holder is None:
            path = Path(opts.regionguard_policy) if opts.regionguard_policy else default_policy_path()
            try:
                holder = EngineHolder(path)
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

    def running(self) -> None:
        self._running = True
        self._announce_pac()
        if self._reload_task is None and ctx.options.regionguard_reload > 0:
            self._reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

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
        if self._reload_task is not None:
            self._reload_task.cancel()
            self._reload_task = None
        self.audit.close()

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
            return req.host
        req.data.host = address
        if req.authority and isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode):
            req.authority = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        return address

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


def _hostport(host_header: str, port: int) -> str:
    if ":" in host_header and not host_header.startswith("[") and host_header.count(":") == 1:
        return host_header
    if host_header.startswith("[") and "]:" in host_header:
        return host_header
    if ":" in host_header:   # bare IPv6
        return f"[{host_header}]:{port}"
    return f"{host_header}:{port}"


def _dns_addons() -> list:
    """The DNS helper's addon (addons/dns_filter.py), if it is installed beside this file."""
    if not (Path(__file__).with_name("dns_filter.py")).is_file():
        return []
    module = None
    for name in ("dns_filter", "addons.dns_filter"):
        try:
            module = importlib.import_module(name)
            break
        except ImportError:
            continue
        except Exception:  # noqa: BLE001 - a broken DNS addon must not take the proxy down
            log.exception("regionguard: addons/dns_filter.py failed to load; DNS flows unfiltered")
            return []
    if module is None:
        log.error("regionguard: addons/dns_filter.py present but not importable")
        return []
    found = getattr(module, "addons", None)
    if found is not None:
        return list(found)
    return [cls() for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__
            and (hasattr(cls, "dns_request") or hasattr(cls, "dns_response"))]


addons = [RegionGuard(), *_dns_addons()]
