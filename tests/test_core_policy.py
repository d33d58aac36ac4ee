"""The policy format and Zoom's rules: valid policies load, invalid ones say file, line, field, fix."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionguard import PolicyError, allowed_regions, load_catalogue, load_policy, parse_policy
from tests.conftest import CONFIG

CAT = load_catalogue()


@pytest.mark.parametrize("path", sorted((CONFIG / "examples").glob("*.yaml")) + [CONFIG / "policy.yaml"])
def test_shipped_policies_are_valid(path):
    policy = load_policy(path)
    assert policy.default_region in policy.rules.allowed


def test_issue_example_policy_with_groups():
    p = parse_policy("""
version: 1
account: {type: paid, default_region: US}
regions: {opt_in: [US, Europe]}
client: {location: outside-china}
actions: {disallowed: block, unknown: block}
overrides:
  - {match: 203.0.113.0/24, region: DE, zoom: true}
  - {match: "*.lab.example", region: CN, zoom: true}
groups:
  - name: shanghai-office
    clients: [10.20.0.0/16]
    client: {location: china}
    regions: {opt_in: [CN]}
""", "p.yaml")
    assert p.rules.allowed == {"US", "DE", "NL", "IE"}
    shanghai = p.rules_for("10.20.3.4")
    assert shanghai.name == "shanghai-office" and shanghai.allowed == {"US", "CN"}
    assert p.rules_for("10.21.0.1").name == "default"
    assert p.enabled_crc_regions("10.20.0.1") == {"US", "CN"}
    assert p.enabled_dialin_countries() == {"US", "DE", "NL", "IE"}


def test_opt_out_means_every_region_but_those_and_china():
    p = parse_policy("version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_out: [IN]}\n")
    assert p.rules.allowed == CAT.codes - {"IN", "CN"}


def test_aliases_and_legacy_codes():
    p = parse_policy("version: 1\naccount: {type: paid, default_region: JP}\nregions: {opt_in: [EU]}\n")
    assert p.default_region == "TY"
    assert p.rules.allowed == {"TY", "DE", "NL", "IE"}


def errors_of(text: str) -> list:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "bad.yaml")
    return e.value.problems


def test_opting_out_the_default_region_is_an_error_naming_line_field_and_fix():
    [p] = errors_of("version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_out: [US]}\n")
    assert p.file == "bad.yaml" and p.line == 3 and p.field == "regions.opt_out"
    assert "default region" in p.message and "remove US" in p.fix
    assert str(p).startswith("bad.yaml:3: regions.opt_out:")


def test_free_account_with_opt_lists_is_an_error_that_says_so():
    [p] = errors_of("version: 1\naccount: {type: free, default_region: US}\nregions: {opt_in: [DE]}\n")
    assert "free account is fixed to its default region" in p.message


def test_outside_china_with_cn_opted_in_is_a_contradiction():
    [p] = errors_of("version: 1\naccount: {type: paid, default_region: US}\n"
                    "client: {location: outside-china}\nregions: {opt_in: [US, CN]}\n")
    assert "never routed to China" in p.message and p.field == "regions.opt_in"
    assert "location: china" in p.fix


def test_unknown_region_suggests_the_close_one():
    [p] = errors_of("version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_in: [Eurpoe]}\n")
    assert p.field == "regions.opt_in[0]" and "'Eurpoe'" in p.message and "Europe" in p.fix


def test_unknown_key_and_bad_choice_are_reported_together():
    problems = errors_of("version: 1\naccount: {type: paid, default_region: US}\n"
                         "actions: {disalowed: block, unknown: drop}\n")
    fields = {p.field for p in problems}
    assert fields == {"actions.disalowed", "actions.unknown"}
    assert any("did you mean 'disallowed'" in p.fix for p in problems)


def test_yaml_syntax_error_names_the_line():
    [p] = errors_of("version: 1\naccount: {type: paid, default_region: US\nregions: [\n")
    assert p.line is not None and "not valid YAML" in p.message


def test_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path / "nope.yaml")
    assert "file not found" in str(e.value)


def test_group_inherits_top_level_and_china_group_needs_cn_opted_in():
    p = parse_policy("""
version: 1
account: {type: paid, default_region: US}
regions: {opt_in: [US, DE]}
groups:
  - {name: beijing, clients: [10.30.0.0/16], client: {location: china}}
""")
    g = p.rules_for("10.30.0.1")
    assert g.location == "china" and g.allowed == {"US", "DE"}  # CN not opted in: not allowed


def test_missing_data_files_are_warnings_not_errors(write_policy):
    path = write_policy("""
        version: 1
        account: {type: paid, default_region: US}
        data: {geoip: [missing.mmdb]}
    """)
    p = load_policy(path)
    assert p.data.geoip == ()
    assert "missing.mmdb" in str(p.warnings[0]) and "not found" in str(p.warnings[0])


codes = sorted(CAT.codes)
region_lists = st.one_of(st.none(), st.lists(st.sampled_from(codes + list(CAT.groups)), max_size=6))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["paid", "free"]), st.sampled_from(codes), region_lists, region_lists,
       st.sampled_from(["outside-china", "china"]))
def test_zoom_rules_hold_for_every_policy_that_loads(account, default, opt_in, opt_out, location):
    lines = ["version: 1", f"account: {{type: {account}, default_region: {default}}}",
             f"client: {{location: {location}}}"]
    regions = {}
    if opt_in is not None:
        regions["opt_in"] = opt_in
    if opt_out is not None:
        regions["opt_out"] = opt_out
    if regions:
        lines.append("regions: {" + ", ".join(f"{k}: [{', '.join(repr(x) for x in v)}]"
                                               for k, v in regions.items()) + "}")
    try:
        p = parse_policy("\n".join(lines) + "\n")
    except PolicyError:
        return
    allowed = p.rules.allowed
    assert default in allowed                                  # default region always allowed
    if location == "outside-china":
        assert "CN" not in allowed                              # outside China never reaches CN
    if account == "free":
        assert allowed == {default}                             # free ⇒ default only
    if "CN" in allowed:
        assert default == "CN" or (opt_in and ("CN" in opt_in or "China" in opt_in))


@given(st.sampled_from(codes), st.sets(st.sampled_from(codes)), st.sets(st.sampled_from(codes)))
def test_allowed_regions_always_contains_the_default(default, opt_in, opt_out):
    assert default in allowed_regions(CAT, "paid", default, opt_in, opt_out - {default})
    assert allowed_regions(CAT, "free", default, opt_in, opt_out) == {default}
