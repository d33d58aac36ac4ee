"""Policy files that can hurt: whatever the YAML, loading it is bounded in time, memory and error
text, and every value the policy reads has the type and names what the reader expects.

The hostile files go through a real `regionguard validate` subprocess, bounded in time (a
deadline), memory (an address-space limit) and output size."""

from __future__ import annotations

import os
import resource
import subprocess

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from regionguard import PolicyError, parse_policy
from regionguard.core.errors import MAX_SHOWN
from regionguard.core.safeyaml import MAX_BYTES, MAX_DEPTH, load_yaml
from tests.conftest import BIN, CONFIG

HEAD = "version: 1\naccount: {type: paid, default_region: US}\n"

# "billion laughs": 9 levels of 9 aliases; old loaders built 9^7 lists (gigabytes) from 420 bytes
ALIAS_BOMB = HEAD + "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True))


MEMORY_LIMIT = 1024 * 1024 * 1024   # address space for the validating process: the bomb took 2 GB


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def validate(path, timeout: float = 60.0) -> tuple[int, str]:
    """Run `regionguard validate PATH` with at most MEMORY_LIMIT of memory (beyond it, allocations
    fail): (exit code, output). Killed, and the test failed, at `timeout`."""
    try:
        r = subprocess.run([str(BIN / "regionguard"), "validate", str(path)], capture_output=True,
                           text=True, errors="replace", timeout=timeout, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"regionguard validate {path.name} still running after {timeout}s")
    return r.returncode, r.stdout + r.stderr


def test_alias_bomb_is_refused_in_bounded_time_memory_and_text(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600
    code, out = validate(path, timeout=30)     # 13 s and 2 GB before
    assert code == 2
    assert "anchors and aliases" in out and f"{path}:3" in out      # file and line
    assert "fix:" in out and "Traceback" not in out and "MemoryError" not in out
    assert len(out) < 2000                                       # not 35 MB of expanded lists


def test_even_a_harmless_alias_or_anchor_is_refused():
    for text in (HEAD + "regions: {opt_in: &r [US]}\n",
                 HEAD + "x: &x [US]\nregions: {opt_in: *x}\n"):
        with pytest.raises(PolicyError, match="anchors and aliases"):
            parse_policy(text, "p.yaml")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900])
def test_deep_nesting_is_an_error_not_a_recursion_crash(tmp_path, depth):
    path = tmp_path / "deep.yaml"
    path.write_text(HEAD + "overrides: " + "[" * depth + "]" * depth + "\n")
    code, out = validate(path)
    assert code == 2, out
    assert "Traceback" not in out and "RecursionError" not in out
    assert "nested more than" in out and f"{path}:3" in out


def test_nesting_a_real_policy_needs_is_fine():
    parse_policy(HEAD + "groups:\n  - {name: a, clients: [10.0.0.0/8], regions: {opt_in: [US]}}\n", "p.yaml")


@pytest.mark.parametrize("text, key, first, second", [
    (HEAD + "regions: {opt_in: [US]}\nregions: {opt_in: [DE]}\n", "regions", 3, 4),
    (HEAD.replace("US}", "US, default_region: DE}"), "default_region", 2, 2),
    (HEAD + "overrides:\n  - match: 203.0.113.0/24\n    region: DE\n    region: IN\n", "region", 5, 6),
    (HEAD + "version: 1\n", "version", 1, 3),
])
def test_a_key_given_twice_is_an_error_naming_both_lines(text, key, first, second):
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml")
    assert f"p.yaml:{second}:" in str(e.value)
    assert f"{key!r} given twice" in str(e.value) and f"first at line {first}" in str(e.value)


@pytest.mark.parametrize("text, needle", [
    (HEAD + "regions: !!set {US: null}\n", "tags"),
    (HEAD + "dns: !!omap [{block_answer: nxdomain}]\n", "tags"),
    (HEAD + "name: !!binary aGVsbG8=\n", "tags"),
    (HEAD + "dns:\n  <<: {block_answer: refused}\n", "merge keys"),
    (HEAD + "? [a, b]\n: 1\n", "plain text"),
])
def test_tags_merge_keys_and_complex_keys_are_refused(text, needle):
    with pytest.raises(PolicyError, match=needle):
        parse_policy(text, "p.yaml")


def test_an_oversized_file_is_refused_before_it_is_read_in_full(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write(HEAD + "description: |\n")
        line = "  " + "x" * 1000 + "\n"
        for _ in range(MAX_BYTES // len(line) + 10):
            f.write(line)
    code, out = validate(path)
    assert code == 2 and "more than the" in out and len(out) < 2000


def test_an_endless_or_blocking_file_is_refused(tmp_path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")         # reads forever: the old loader read it into memory
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)                      # blocks a reader until someone writes
    for path in (link, fifo):
        code, out = validate(path, timeout=30)
        assert code == 2 and "not a regular file" in out


def test_error_text_is_bounded_whatever_the_file_holds():
    many = HEAD + "overrides:\n" + "".join(f"  - {{match: 203.0.113.{i}, country: Q{i % 10}}}\n"
                                           for i in range(200))
    with pytest.raises(PolicyError) as e:
        parse_policy(many, "p.yaml")
    assert len(e.value.problems) == 200
    assert str(e.value).count("fix:") == MAX_SHOWN and "and 180 more problem(s)" in str(e.value)
    huge = HEAD + f"name: [{', '.join(['x' * 50] * 20000)}]\n"      # a 1 MB bad value
    with pytest.raises(PolicyError) as e:
        parse_policy(huge, "p.yaml")
    assert len(str(e.value)) < 1500 and "name" in str(e.value)


# --- scalar types: what YAML made of a value is checked, never str()-ed into something else ---

@pytest.mark.parametrize("line, field", [
    ("version: true", "version"),
    ("version: 1.5", "version"),
    ("version: 1.0", "version"),
    ('version: "1"', "version"),
    ("name: 12", "name"),
    ("description: [a, b]", "description"),
    ("account: {type: true, default_region: US}", "account.type"),
    ("account: {type: paid, default_region: 1}", "account.default_region"),
    ("account: {type: paid, default_region: [US]}", "account.default_region"),
    ("regions: {opt_in: true}", "regions.opt_in"),
    ("regions: {opt_in: US}", "regions.opt_in"),               # a string where a list is read
    ("regions: {opt_in: [US, 1]}", "regions.opt_in[1]"),
    ("regions: {opt_out: [{IN: 1}]}", "regions.opt_out[0]"),
    ("client: {location: 1}", "client.location"),
    ("actions: {disallowed: true}", "actions.disallowed"),
    ("scope: {governed: meeting}", "scope.governed"),
    ("scope: {governed: [1]}", "scope.governed[0]"),
    ("scope: {other: true}", "scope.other"),
    ("overrides: [{match: 12, region: DE}]", "overrides[0].match"),
    ("overrides: [{match: 203.0.113.0/24, region: true}]", "overrides[0].region"),
    ("overrides: [{match: 203.0.113.0/24, country: NO}]", "overrides[0].country"),   # Norway, unquoted
    ("overrides: [{match: 203.0.113.0/24, country: 49}]", "overrides[0].country"),
    ("overrides: [{match: 203.0.113.0/24, zoom: yes please}]", "overrides[0].zoom"),
    ("overrides: [{match: 203.0.113.0/24, region: DE, note: 5}]", "overrides[0].note"),
    ("overrides: {match: 203.0.113.0/24, region: DE}", "overrides"),
    ("groups: [{name: true, clients: [10.0.0.0/8]}]", "groups[0].name"),
    ("groups: [{name: a, clients: 10.0.0.0/8}]", "groups[0].clients"),
    ("groups: [{name: a, clients: [167772160]}]", "groups[0].clients[0]"),
    ("evidence: {precedence: zoom-dc}", "evidence.precedence"),
    ("evidence: {precedence: [1]}", "evidence.precedence[0]"),
    ("evidence: {min_confidence: true}", "evidence.min_confidence"),
    ("evidence: {min_confidence: .nan}", "evidence.min_confidence"),
    ("data: {geoip: x.mmdb}", "data.geoip"),
    ("data: {geofeeds: [1]}", "data.geofeeds[0]"),
    ("data: {cloud: 1}", "data.cloud"),
    ("resolver: {nameservers: [53]}", "resolver.nameservers[0]"),
    ("resolver: {nameservers: 127.0.0.1}", "resolver.nameservers"),
    ("resolver: {hosts: {de.zoom.us: 2130706433}}", "resolver.hosts.de.zoom.us"),
    ("resolver: {hosts: {1: 127.0.0.1}}", "resolver.hosts[1]"),
    ("resolver: {timeout: true}", "resolver.timeout"),
    ("resolver: {timeout: 100000.0}", "resolver.timeout"),
    ("reroute: [{match: 1, to: us01.zoom.us}]", "reroute[0].match"),
    ("reroute: [{match: '*.zoom.us', to: [us01.zoom.us]}]", "reroute[0].to"),
    ("reroute: [{match: '*.zoom.us', to: 'not a host'}]", "reroute[0].to"),
    ("reroute: [{match: '*.zoom.us', to: '*.zoom.us'}]", "reroute[0].to"),
    ('data: {geoip: ["a\\0b.mmdb"]}', "data.geoip[0]"),
    ("dns: {strip_ech: 1}", "dns.strip_ech"),
    ("dns: {max_ttl: true}", "dns.max_ttl"),
    ("dns: {max_ttl: 1.5}", "dns.max_ttl"),
    ("dns: {max_ttl: 99999999999}", "dns.max_ttl"),
    ("dns: {block_answer: [nxdomain]}", "dns.block_answer"),
    ("gateway: {clients: [true]}", "gateway.clients[0]"),
    ("gateway: {clients: 10.0.0.0/8}", "gateway.clients"),
    ("gateway: {allow_proxy_host: 1}", "gateway.allow_proxy_host"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_field_and_line(line, field):
    text = HEAD + line + "\n"
    if line.startswith(("version", "account")):
        text = text.replace("version: 1\n", "", line.startswith("version")).replace(
            "account: {type: paid, default_region: US}\n", "", line.startswith("account"))
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml")
    assert f": {field}: " in str(e.value), str(e.value)
    assert "p.yaml:" in str(e.value) and "fix:" in str(e.value)


def test_quoted_values_of_the_right_type_are_fine():
    p = parse_policy(HEAD + 'name: "12"\noverrides:\n  - {match: 203.0.113.0/24, country: "NO"}\n'
                     "  - {match: 198.51.100.0/24, country: de, zoom: true}\n"
                     "resolver: {hosts: {de.zoom.us: 127.0.1.1, x.zoom.us: [127.0.1.2, '::1']}}\n",
                     "p.yaml")
    assert [o.country for o in p.overrides] == ["NO", "DE"]
    assert p.resolver.hosts["x.zoom.us"] == ("127.0.1.2", "::1")


# --- values that name something: they must name something that exists ---

@pytest.mark.parametrize("country, suggestion", [("XX", None), ("ZZ", None), ("Germany", None),
                                                 ("UK", "'GB'"), ("D", None), ("EU", None)])
def test_an_override_with_an_unknown_country_is_an_error(country, suggestion):
    with pytest.raises(PolicyError) as e:
        parse_policy(HEAD + f"overrides:\n  - {{match: 203.0.113.0/24, country: {country}}}\n", "p.yaml")
    text = str(e.value)
    assert "p.yaml:4: overrides[0].country:" in text and "ISO 3166-1 alpha-2" in text
    if suggestion:
        assert suggestion in text


def test_override_match_must_be_an_address_prefix_or_hostname_pattern():
    for bad in ("'zoom us'", "'*.zoom.us/x'", "'de.zoom.us;rm'", "'..'"):
        with pytest.raises(PolicyError, match=r"overrides\[0\]\.match"):
            parse_policy(HEAD + f"overrides:\n  - {{match: {bad}, region: DE}}\n", "p.yaml")
    p = parse_policy(HEAD + "overrides:\n  - {match: '*.Lab.Example.', region: DE}\n"
                     "  - {match: 2001:db8::/32, region: DE}\n  - {match: 192.0.2.7, zoom: false}\n",
                     "p.yaml")
    assert [o.match for o in p.overrides] == ["*.lab.example", "2001:db8::/32", "192.0.2.7"]


# --- the reader builds what yaml.safe_load builds, for every YAML it accepts ---

_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
            | st.floats(allow_nan=False, width=64) | st.text(max_size=20) | st.dates())
_keys = st.text(max_size=12) | st.integers(0, 99) | st.booleans()
_documents = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(_keys, inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(document=_documents, flow=st.sampled_from([None, True, False]))
def test_the_reader_builds_what_safe_load_builds(document, flow):
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    data, lines = load_yaml(text, "p.yaml")
    assert data == yaml.safe_load(text)
    assert lines[()] >= 1


@pytest.mark.parametrize("path", sorted((CONFIG / "examples").glob("*.yaml")) + [CONFIG / "policy.yaml"])
def test_the_reader_reads_the_shipped_policies_as_safe_load_does(path):
    text = path.read_text()
    assert load_yaml(text, str(path))[0] == yaml.safe_load(text)
