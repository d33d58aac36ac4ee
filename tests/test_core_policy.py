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


@pytest.mark.parametrize("text,line", [
    # the unclosed `{` of line 2: PyYAML notices it where the next key starts (line 3), but
    # the brace is missing at the end of line 2, so that is the line reported
    ("version: 1\naccount: {type: paid, default_region: US\nregions: [\n", 2),
    ("version: 1\naccount: {type: paid,\n  default_region: US\n\n# c\nregions: {}\n", 3),
    ("version: 1\nregions: {opt_in: [US, EU\n}\n", 2),                      # `]` missing
    ("version: 1\naccount:\n  type: paid\n   default_region: US\n", 4),      # indentation
    ("version: 1\naccount: {type: paid, default_region: US}\nclient: {location: china}\n"
     "regions: {opt_in: [US}\n", 4),                                          # `]` missing
])
def test_yaml_syntax_error_names_the_line(text, line):
    [p] = errors_of(text)
    assert p.line == line and p.file == "bad.yaml" and "not valid YAML" in p.message
    assert str(p).startswith(f"bad.yaml:{line}: not valid YAML") and "YAML syntax" in p.fix


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
names = codes + list(CAT.groups)
names_but_china = [n for n in names if "CN" not in CAT.expand(n)]
# Region lists mostly without China (so most drawn policies are valid), sometimes with it.
region_lists = st.one_of(st.lists(st.sampled_from(names_but_china), max_size=6),
                         st.lists(st.sampled_from(names), max_size=6))
# (opt_in, opt_out): neither, one of them (the common cases), or both (an error, drawn less often)
region_choices = st.sampled_from(["none", "none", "in", "in", "in", "out", "out", "both"]).flatmap(
    lambda mode: {"none": st.just((None, None)), "in": st.tuples(region_lists, st.none()),
                  "out": st.tuples(st.none(), region_lists),
                  "both": st.tuples(region_lists, region_lists)}[mode])


def zoom_rules(account, default, opt_in, opt_out, location):
    """Zoom's rules, written out independently of the checker: (the allowed set, the fields
    whose errors the policy must be rejected with)."""
    expand = set().union(*(CAT.expand(n) for n in opt_in or ())), set().union(
        *(CAT.expand(n) for n in opt_out or ()))
    wrong = set()
    if account == "free" and (opt_in is not None or opt_out is not None):
        wrong.add("regions")                      # a free account is fixed to its default region
    if opt_in is not None and opt_out is not None:
        wrong.add("regions")                      # one list or the other
    if opt_out and default in expand[1]:
        wrong.add("regions.opt_out")              # the default region cannot be opted out
    if account == "free":
        allowed = {default}
    elif opt_in is not None:        # with both lists, the checker goes on with opt_in alone
        allowed = expand[0] | {default}
    elif opt_out is not None:
        allowed = set(codes) - {"CN"} - expand[1] | {default}
    else:
        allowed = set(codes) - {"CN"} | {default}
    if location == "outside-china" and "CN" in allowed:   # clients outside China never reach CN
        wrong.add("regions.opt_in" if opt_in and "CN" in expand[0]
                  else "account.default_region")
    return allowed, wrong


def test_zoom_rules_hold_for_every_policy_that_loads():
    seen = {}

    def saw(case):
        seen[case] = seen.get(case, 0) + 1

    @settings(max_examples=600, deadline=None, database=None)
    # CN drawn as the default region more often than the others: the China rules are about it
    @given(st.sampled_from(["paid", "paid", "paid", "free"]), st.sampled_from(codes + ["CN"] * 2),
           region_choices,
           st.sampled_from(["outside-china", "outside-china", "china"]))
    def check(account, default, opt_lists, location):
        opt_in, opt_out = opt_lists
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
        allowed, wrong = zoom_rules(account, default, opt_in, opt_out, location)
        try:
            p = parse_policy("\n".join(lines) + "\n")
        except PolicyError as e:
            # rejected: only for a rule it breaks, and naming that rule's field
            assert wrong, f"a valid policy was rejected: {e}"
            assert {q.field for q in e.problems} == wrong, e
            for case in wrong:
                saw(f"rejected: {case}")
            if "CN" in allowed and location == "outside-china":
                saw("rejected: CN for clients outside China")
                assert any("never routed to China" in q.message for q in e.problems)
            return
        assert not wrong, f"a policy breaking Zoom's rules ({wrong}) loaded"
        saw("valid")
        assert p.rules.allowed == allowed
        assert default in p.rules.allowed                      # default region always allowed
        if location == "outside-china":
            assert "CN" not in p.rules.allowed                 # outside China never reaches CN
        else:
            saw("valid, clients in China")
        if "CN" in p.rules.allowed:
            saw("valid, CN allowed")
            assert default == "CN" or (opt_in and "CN" in {c for n in opt_in
                                                         for c in CAT.expand(n)})
        if account == "free":
            saw("valid, free")
            assert p.rules.allowed == {default}                # free: the default region only

    check()
    # Valid policies are the common case, so the invariants on loaded policies ran; each
    # rejection reason occurred, so a checker that rejects (or accepts) everything fails.
    assert seen.get("valid", 0) >= 210, seen     # 35 %; about half are drawn
    for case in ("valid, clients in China", "valid, CN allowed", "valid, free", "rejected: regions",
                 "rejected: regions.opt_out", "rejected: CN for clients outside China"):
        assert seen.get(case, 0) >= 5, (case, seen)


@given(st.sampled_from(codes), st.sets(st.sampled_from(codes)), st.sets(st.sampled_from(codes)))
def test_allowed_regions_always_contains_the_default(default, opt_in, opt_out):
    assert default in allowed_regions(CAT, "paid", default, opt_in, opt_out - {default})
    assert allowed_regions(CAT, "free", default, opt_in, opt_out) == {default}
