"""Longest-prefix match: nested prefixes, IPv4/IPv6 in one table, merge of several tables."""

import ipaddress
import random

from hypothesis import given
from hypothesis import strategies as st

from regionguard.core.prefixes import PrefixTable, address_key, merge


def test_longest_prefix_wins_and_outer_prefix_resumes_after_inner():
    t = PrefixTable.from_prefixes([("10.0.0.0/8", "outer"), ("10.1.0.0/16", "inner"),
                                   ("10.1.2.0/24", "innermost")])
    assert t.get("10.0.0.1") == "outer"
    assert t.get("10.1.0.1") == "inner"
    assert t.get("10.1.2.3") == "innermost"
    assert t.get("10.1.3.0") == "inner"
    assert t.get("10.2.0.0") == "outer"
    assert t.get("11.0.0.0") is None
    assert t.get("9.255.255.255") is None


def test_ipv4_and_ipv6_share_one_table_and_mapped_addresses_match_ipv4():
    t = PrefixTable.from_prefixes([("192.0.2.0/24", "v4"), ("2001:db8::/32", "v6")])
    assert t.get("192.0.2.9") == "v4"
    assert t.get("::ffff:192.0.2.9") == "v4"
    assert t.get("2001:db8:1::1") == "v6"
    assert t.get("2001:db9::1") is None


def test_later_duplicate_prefix_wins():
    t = PrefixTable.from_prefixes([("192.0.2.0/24", "first"), ("192.0.2.0/24", "second")])
    assert t.get("192.0.2.1") == "second"


def test_malformed_address_is_a_value_error():
    for bad in ("", "1.2.3", "300.1.1.1", "zoom.us", "1.2.3.4.5", ":::"):
        try:
            address_key(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_merge_gives_every_tables_answer_in_order():
    a = PrefixTable.from_prefixes([("10.0.0.0/8", "a")])
    b = PrefixTable.from_prefixes([("10.1.0.0/16", "b"), ("11.0.0.0/8", "b2")])
    m = merge([a, b])
    assert m.get("10.0.0.1") == ("a",)
    assert m.get("10.1.0.1") == ("a", "b")
    assert m.get("11.1.1.1") == ("b2",)
    assert m.get("12.0.0.0") is None


prefixes = st.builds(
    lambda addr, plen: ipaddress.ip_network(f"{ipaddress.IPv4Address(addr)}/{plen}", strict=False),
    st.integers(0, 2**32 - 1), st.integers(4, 32))


@given(st.lists(prefixes, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_matches_a_brute_force_longest_prefix_match(nets, rnd: random.Random):
    table = PrefixTable.from_prefixes([(str(n), i) for i, n in enumerate(nets)])
    probes = [n.network_address for n in nets] + [n.broadcast_address for n in nets]
    probes += [ipaddress.IPv4Address(rnd.randrange(2**32)) for _ in range(20)]
    for ip in probes:
        covering = [(n.prefixlen, i) for i, n in enumerate(nets) if ip in n]
        expected = max(covering)[1] if covering else None
        assert table.get(str(ip)) == expected, (str(ip), nets)
