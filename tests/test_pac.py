"""The PAC file: Zoom's domains and ranges, plus what the policy declares Zoom's, go to the proxy.
Evaluated for real with node, with the PAC helper functions browsers provide defined in JS."""

import shutil
import subprocess

import pytest

from tests.conftest import BIN

PAC_HELPERS = r"""
function dnsDomainIs(h, d) { return h.length >= d.length && h.substring(h.length - d.length) == d; }
function shExpMatch(s, p) {
  var re = new RegExp("^" + p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$");
  return re.test(s);
}
function ip2n(a) { return a.split(".").reduce(function (n, x) { return n * 256 + (+x); }, 0); }
function isInNet(h, net, mask) {
  var m = ip2n(mask); return (ip2n(h) & m) >>> 0 == (ip2n(net) & m) >>> 0;
}
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pac_routes_zoom_and_policy_declared_endpoints_through_the_proxy(write_policy, tmp_path):
    policy = write_policy("""
        version: 1
        account: {type: paid, default_region: US}
        overrides:
          - {match: 203.0.113.0/24, region: DE, zoom: true}
          - {match: "*.lab.example", region: CN, zoom: true}
    """)
    pac = subprocess.run([str(BIN / "regionguard"), "pac", "--policy", str(policy),
                          "--proxy", "127.0.0.1:8080"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    script = tmp_path / "pac.js"
    hosts = ["zoom.us", "US05WEB.ZOOM.US.", "meet.lab.example", "203.0.113.9", "159.124.47.249",
             "example.org", "evilzoom.us", "192.0.2.1"]
    script.write_text(PAC_HELPERS + pac + "\n" + "\n".join(
        f'console.log(FindProxyForURL("https://{h}/", "{h}"));' for h in hosts))
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split("\n")
    proxy = "PROXY 127.0.0.1:8080"
    assert out[:len(hosts)] == [proxy, proxy, proxy, proxy, proxy, "DIRECT", "DIRECT", "DIRECT"]
