"""The addon that decides which TLS connections mitmproxy may intercept: by default none (no CA
on clients), and never Zoom's; enforcement itself never needs interception."""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.tls import ClientHelloData

from regionguard.core.prefixes import is_address
from regionguard.mitm.enforce import plain_address
from regionguard.mitm.policy_loader import PolicyLoader

log = logging.getLogger("regionguard")


class TlsPassthrough:
    name = "regionguard_tls"

    def __init__(self, policy: PolicyLoader) -> None:
        self.policy = policy
        self._intercept = "none"   # regionguard_intercept, copied: read on every handshake

    def configure(self, updated: set[str]) -> None:
        if self.policy.not_enforcing() is None:   # only options the policy addon accepted
            self._intercept = ctx.options.regionguard_intercept

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
            engine = self.policy.holder.engine  # type: ignore[union-attr]
            zoom = engine.is_zoom(sni, None) or engine.is_zoom(
                address if address and not is_address(address) else None,
                plain_address(address) if address and is_address(address) else None)
        except Exception:  # noqa: BLE001 - when unsure, do not intercept
            log.exception("regionguard: tls_clienthello")
            zoom = True
        if zoom:
            data.ignore_connection = True
