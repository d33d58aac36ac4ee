"""Every value error of the policy's groups, overrides, resolver, reroute, DNS, evidence and
gateway settings: each names the file, the line, the field, what is wrong and how to fix it, and is
the only problem reported for a file with that one mistake (regionguard validate prints these).

Wrong types (a list where a number goes) are in tests/test_policy_hostile.py; Zoom's region rules
in tests/test_core_policy.py."""

import pytest

from regionguard import PolicyError, load_policy, parse_policy

HEAD = "version: 1\naccount: {type: paid, default_region: US}\n"

# (the policy after HEAD, whose first line is line 3; the line, field, message and fix reported)
CASES = [
    # a string where a list goes: one error whose fix is the list meant (issue 19)
    pytest.param('regions:\n'
                 '  opt_in: US\n',
                 4, 'regions.opt_in',
                 "expected a list, got text 'US'",
                 '`opt_in: [US]`',
                 id='opt_in as a string'),
    pytest.param('groups: lab\n',
                 3, 'groups',
                 "expected a list, got text 'lab'",
                 '`groups` is a list of mappings, one per group',
                 id='groups as a string'),
    pytest.param('groups: [lab]\n',
                 3, 'groups[0]',
                 "expected a group (a mapping), got text 'lab'",
                 'write `groups: [{name: lab, clients: [10.20.0.0/16]',
                 id='a group as a string'),
    pytest.param('groups:\n'
                 '  - clients: [10.20.0.0/16]\n',
                 4, 'groups[0].name',
                 'missing',
                 'give every group a unique `name`',
                 id='group without a name'),
    pytest.param('groups:\n'
                 '  - name: office\n'
                 '    clients: [10.20.0.0/16]\n'
                 '  - name: office\n'
                 '    clients: [10.21.0.0/16]\n',
                 6, 'groups[1].name',
                 "duplicate group name 'office'",
                 'use a unique name',
                 id='group name used twice'),
    pytest.param('groups:\n'
                 '  - name: default\n'
                 '    clients: [10.20.0.0/16]\n',
                 4, 'groups[0].name',
                 "duplicate group name 'default'",
                 'use a unique name',
                 id='group named default'),
    pytest.param('groups:\n'
                 '  - name: office\n'
                 '    clients: [10.20.0.0/16, 10.21.0.0/33]\n',
                 5, 'groups[0].clients[1]',
                 "'10.21.0.0/33' is not an address or CIDR prefix",
                 'write client networks like 10.20.0.0/16 or 2001:db8::/32',
                 id='group client not a network'),
    pytest.param('groups:\n'
                 '  - name: office\n'
                 '    client: {location: china}\n',
                 4, 'groups[0].clients',
                 'missing',
                 'list the client networks this group applies to, e.g. [10.20.0.0/16]',
                 id='group without clients'),
    pytest.param('groups:\n'
                 '  - name: office\n'
                 '    clients: [10.20.0.0/16]\n'
                 '    region: {opt_in: [US]}\n',
                 6, 'groups[0].region',
                 "unknown key 'region'",
                 "remove it or rename it (did you mean 'regions'?)",
                 id='group key misspelt'),
    pytest.param('groups:\n'
                 '  - name: office\n'
                 '    clients: [10.20.0.0/16]\n'
                 '    regions: {opt_in: [US, China]}\n',
                 6, 'groups[0].regions.opt_in',
                 'clients outside China are never routed to China (CN), but CN is '
                 "allowed for group 'office'",
                 'remove CN (or China) from opt_in, or set `client: {location: china}` '
                 'for clients based in China (in a group, for a China office)',
                 id='group outside China allows CN'),
    pytest.param('groups:\n'
                 '  - name: office\n'
                 '    clients: [10.20.0.0/16]\n'
                 '    client: {location: chna}\n',
                 6, 'groups[0].client.location',
                 "'chna' is not a valid value",
                 "use one of: outside-china, china (did you mean 'china'?)",
                 id='group location not a choice'),
    pytest.param('overrides:\n'
                 '  - {region: DE}\n',
                 4, 'overrides[0].match',
                 'missing',
                 'give an address, a CIDR prefix or a hostname pattern such as '
                 '*.lab.example',
                 id='override without match'),
    pytest.param('overrides:\n'
                 '  - {match: 203.0.113.7/24, region: DE}\n',
                 4, 'overrides[0].match',
                 "'203.0.113.7/24' is not a valid CIDR prefix",
                 'clear the host bits, e.g. 203.0.113.0/24',
                 id='override prefix with host bits'),
    pytest.param('overrides:\n'
                 '  - {match: 203.0.113.0/24}\n',
                 4, 'overrides[0]',
                 'says nothing',
                 'give a `region`, a `country` or `zoom: true/false`',
                 id='override says nothing'),
    pytest.param('overrides:\n'
                 '  - {match: 203.0.113.0/24, region: Europe}\n',
                 4, 'overrides[0].region',
                 "'Europe' is a group of regions (DE, IE, NL), but a single region is "
                 'needed',
                 'pick one of DE, IE, NL',
                 id='override region is a group'),
    pytest.param('overrides:\n'
                 '  - {match: 203.0.113.0/24, region: DX}\n',
                 4, 'overrides[0].region',
                 "unknown region 'DX'",
                 "did you mean 'MX' or 'DE'? use one of AU CA CN DE HK IE IN LA MX NL "
                 'SG TY US',
                 id='override region unknown'),
    pytest.param('resolver:\n'
                 "  nameservers: ['127.0.0.1:5353', '127.0.0.1:99999']\n",
                 4, 'resolver.nameservers[1]',
                 "'127.0.0.1:99999' is not HOST:PORT",
                 'write an address with an optional port: 127.0.0.1:5353 or [::1]:53',
                 id='resolver nameserver port'),
    pytest.param('resolver:\n'
                 "  nameservers: ['[::1']\n",
                 4, 'resolver.nameservers[0]',
                 "'[::1' is not HOST:PORT",
                 'write an address with an optional port: 127.0.0.1:5353 or [::1]:53',
                 id='resolver nameserver bracket'),
    pytest.param('resolver:\n'
                 '  hosts: [de.zoom.us]\n',
                 4, 'resolver.hosts',
                 'expected a mapping of name: address',
                 'write hosts: {"de.zoom.us": "127.0.1.1"}',
                 id='resolver hosts not a mapping'),
    pytest.param('resolver:\n'
                 '  hosts:\n'
                 '    de.zoom.us: [127.0.1.1, de.example]\n',
                 5, 'resolver.hosts.de.zoom.us',
                 "'de.example' is not an IP address",
                 'map each name to an address or a list of addresses',
                 id='resolver host not an address'),
    pytest.param('resolver:\n'
                 '  timeout: 0\n',
                 4, 'resolver.timeout',
                 '0 is not a number of seconds above 0 and at most 60',
                 'write e.g. timeout: 3',
                 id='resolver timeout zero'),
    pytest.param('resolver:\n'
                 "  nameserver: ['127.0.0.1']\n",
                 4, 'resolver.nameserver',
                 "unknown key 'nameserver'",
                 "remove it or rename it (did you mean 'nameservers'?)",
                 id='resolver key misspelt'),
    pytest.param('reroute:\n'
                 "  - {match: '*.zoom.us'}\n",
                 4, 'reroute[0]',
                 'needs both `match` and `to`',
                 'write {match: "*.zoom.us", to: us01.zoom.us}',
                 id='reroute without to'),
    pytest.param('reroute:\n'
                 "  - {match: 'zoom us', to: us01.zoom.us}\n",
                 4, 'reroute[0].match',
                 "'zoom us' is not a hostname pattern",
                 'write e.g. match: "*.zoom.us"',
                 id='reroute match not a pattern'),
    pytest.param('reroute:\n'
                 "  - {match: '*.zoom.us', to: '*.zoom.us'}\n",
                 4, 'reroute[0].to',
                 "'*.zoom.us' is not a hostname",
                 'write e.g. to: us01.zoom.us',
                 id='reroute to a wildcard'),
    pytest.param('dns:\n'
                 '  block_answer: nxdomian\n',
                 4, 'dns.block_answer',
                 "'nxdomian' is not a valid value",
                 "use one of: nxdomain, nodata, refused, zero (did you mean 'nxdomain'?)",
                 id='dns block answer'),
    pytest.param('dns:\n'
                 '  max_ttl: -1\n',
                 4, 'dns.max_ttl',
                 '-1 is not a whole number from 0 to 2147483647',
                 'write e.g. max_ttl: 3600',
                 id='dns max ttl negative'),
    pytest.param('dns:\n'
                 "  strip_ech: 'yes'\n",
                 4, 'dns.strip_ech',
                 "'yes' is not true or false",
                 'write strip_ech: true',
                 id='dns strip ech text'),
    pytest.param('dns:\n'
                 '  strip_ecs: true\n',
                 4, 'dns.strip_ecs',
                 "unknown key 'strip_ecs'",
                 "remove it or rename it (did you mean 'strip_ech'?)",
                 id='dns key misspelt'),
    pytest.param('evidence:\n'
                 '  conflicts: strikt\n',
                 4, 'evidence.conflicts',
                 "'strikt' is not a valid value",
                 "use one of: precedence, strict (did you mean 'strict'?)",
                 id='evidence conflicts'),
    pytest.param('evidence:\n'
                 '  min_confidence: 2\n',
                 4, 'evidence.min_confidence',
                 '2 is not a number from 0 to 1',
                 'write e.g. min_confidence: 0.5',
                 id='evidence min confidence'),
    pytest.param('evidence:\n'
                 '  learned_ttl_days: 0\n',
                 4, 'evidence.learned_ttl_days',
                 '0 is not a number of days from above 0 to 3650',
                 'write e.g. learned_ttl_days: 30',
                 id='evidence ttl'),
    pytest.param('gateway:\n'
                 '  clients: [10.0.0.0/8, 10.1.0.300/16]\n',
                 4, 'gateway.clients[1]',
                 "'10.1.0.300/16' is not an address or CIDR prefix",
                 'list the client networks allowed to use the proxy and DNS filter, '
                 'e.g. [10.0.0.0/8, 2001:db8::/32]',
                 id='gateway client'),
]


@pytest.mark.parametrize("body,line,field,message,fix", CASES)
def test_a_policy_error_names_file_line_field_and_fix(body, line, field, message, fix):
    with pytest.raises(PolicyError) as e:
        parse_policy(HEAD + body, "bad.yaml")
    [problem] = e.value.problems
    assert (problem.file, problem.line, problem.field) == ("bad.yaml", line, field)
    assert message in problem.message and fix in problem.fix
    assert str(problem).startswith(f"bad.yaml:{line}: {field}: ")


@pytest.mark.parametrize("body,line,field,message,fix", CASES[:3])
def test_a_policy_file_with_an_error_is_refused_naming_its_path(tmp_path, body, line, field,
                                                                message, fix):
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + body, encoding="utf-8")
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    assert str(e.value).startswith(f"{path}:{line}: {field}: ")
