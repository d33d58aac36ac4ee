"""The proxy's DNS addons when regionguard.mitm.dns_filter cannot be loaded (regionguard.mitm.
dns_missing), in process: every query refused, and why said once. The same through a real
mitmdump is test_dns_addon.py::test_without_its_dns_filter_the_proxy_refuses_dns_rather_than_relay_it."""

from __future__ import annotations

import logging
import sys

import pytest
from mitmproxy.test import tflow

from regionguard.mitm import dns_missing
from regionguard.mitm.dns_missing import DnsFilterMissing, dns_addons

REFUSED = 5


def test_dns_request_refuses_every_query_and_says_why_once(caplog):
    stand_in = DnsFilterMissing("regionguard.mitm.dns_filter failed to load (RuntimeError: x)")
    with caplog.at_level(logging.ERROR, logger="regionguard"):
        flows = [tflow.tdnsflow() for _ in range(3)]
        for f in flows:
            stand_in.dns_request(f)
    assert all(f.response is not None and f.response.response_code == REFUSED for f in flows)
    said = [r for r in caplog.records if "every DNS query through the proxy is refused" in r.message]
    assert len(said) == 1 and "failed to load (RuntimeError: x)" in said[0].message


def test_the_dns_filter_loads_when_it_can():
    assert [type(a).__name__ for a in dns_addons()] == ["DnsFilter"]


def test_a_dns_filter_that_is_not_installed_gets_the_stand_in(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "regionguard.mitm.dns_filter", None)   # import fails: ImportError
    with caplog.at_level(logging.ERROR, logger="regionguard"):
        (stand_in,) = dns_addons()
    assert isinstance(stand_in, DnsFilterMissing)
    assert stand_in.problem.startswith("regionguard.mitm.dns_filter cannot be imported")
    assert caplog.records == []   # said at the first query: an error now would stop mitmdump


@pytest.mark.parametrize("error", [RuntimeError("half-installed"), SyntaxError("bad edit")])
def test_a_dns_filter_that_fails_to_load_gets_the_stand_in_and_an_error(monkeypatch, caplog, error):
    real = dns_missing.importlib.import_module

    def failing(name, *args):
        if name == "regionguard.mitm.dns_filter":
            raise error
        return real(name, *args)

    monkeypatch.setattr(dns_missing.importlib, "import_module", failing)
    with caplog.at_level(logging.ERROR, logger="regionguard"):
        (stand_in,) = dns_addons()
    assert isinstance(stand_in, DnsFilterMissing)
    assert f"failed to load ({type(error).__name__}: " in stand_in.problem
    assert "regionguard: regionguard.mitm.dns_filter failed to load" in caplog.text
