"""What a verdict does to a mitmproxy flow: the 403 page, the mark and comment mitmweb shows,
the audit record and log line, and the verdict after an internal error (fail closed for Zoom)."""

from __future__ import annotations

import html
import logging
from typing import Any

from mitmproxy import http

from regionguard.audit.log import AuditLog
from regionguard.core.decision import Action, Decision
from regionguard.core.prefixes import is_address
from regionguard.core.reload import EngineHolder
from regionguard.mitm.enforce import Verdict, plain_address

log = logging.getLogger("regionguard")

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


def mode_name(client: Any) -> str:
    """The proxy mode a client connection came in through (regular, wireguard, ...)."""
    mode = getattr(client, "proxy_mode", None)
    return getattr(mode, "type_name", "") or ""


def record(audit: AuditLog, verdict: Verdict, client: Any, via: str, audit_pass: bool) -> None:
    """Audit a verdict reached in hook `via`, and log what enforcement changed."""
    d = verdict.decision
    if d.action is Action.PASS and not audit_pass:
        return
    if verdict.rerouted_to:
        audit.record(d, mode=mode_name(client), front_end="mitmproxy", hook=via,
                     connect_to=verdict.address, rerouted_to=verdict.rerouted_to)
    else:
        audit.record(d, mode=mode_name(client), front_end="mitmproxy", hook=via,
                     connect_to=verdict.address)
    if d.action is not Action.PASS and d.action is not Action.ALLOW:
        # Allowed connections are routine (the audit log has them; a log record per request
        # costs more than the decision); what enforcement changed is worth a line.
        level = logging.WARNING if verdict.blocked else logging.INFO
        log.log(level, "regionguard: %s %s %s %s:%s region %s [%s]%s", str(d.action).upper(),
                d.transport, d.host or "-", d.address or "-", d.port, d.region or "unknown",
                d.rule, f" → {verdict.rerouted_to}" if verdict.rerouted_to else "")


def mark(flow: Any, verdict: Verdict) -> None:
    """Mark and comment the flow for mitmweb and the console (nothing for traffic not Zoom's)."""
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


def fail_closed(holder: EngineHolder | None, host: str | None, address: str | None, port: int,
                transport: str, client: str | None, error: Exception) -> Verdict | None:
    """The verdict after an internal error: block Zoom, leave everything else alone (None)."""
    log.exception("regionguard: internal error deciding %s %s: fail closed for Zoom", host, address)
    try:
        engine = holder.engine  # type: ignore[union-attr]
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
