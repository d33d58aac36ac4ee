"""TlsPassthrough (regionguard.mitm.tls_passthrough), in process (taddons): which choice of
`regionguard_intercept` it acts on. The choices themselves, against real ClientHellos, are
test_proxy_hooks.py's tls_clienthello group."""

from __future__ import annotations

import asyncio

from tests.proxy_support import enforcing_addons
from tests.test_proxy_hooks import hello, policy_text


def test_tls_clienthello_acts_on_the_last_accepted_choice(tmp_path):
    """A change refused before running (a bad option beside it) is not taken; the next accepted
    configuration takes every option again, not only the ones it changed."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())

    async def check():
        with enforcing_addons(policy, regionguard_intercept="non-zoom") as (addons, tctx):
            def zoom_ignored() -> bool:
                data = hello(tctx, "de.zoom.us", None)
                addons.tls.tls_clienthello(data)
                return data.ignore_connection

            assert zoom_ignored()
            tctx.options.update(regionguard_intercept="all", regionguard_reload=-1)
            assert addons.policy.not_enforcing() is not None
            assert zoom_ignored()                       # still non-zoom
            tctx.options.update(regionguard_reload=1)
            assert addons.policy.not_enforcing() is None
            assert not zoom_ignored()                   # all, now that it is accepted

    asyncio.run(check())
