"""regionguard: enforce a Zoom data-center region policy on the client side.

The pure core (regions, policy, evidence, the Engine) is regionguard.core; the front ends over it
are dns, mitm and nft, the offline tools replay, report and explain, and cli.py the command line.

Public API::

    engine = regionguard.Engine.from_policy_file("config/policy.yaml")
    d = engine.decide(client="10.0.0.5", host="zoomam104zc.zoom.us",
                      address="159.124.47.249", port=8801, transport="udp")
    d.action, d.region, d.rule, d.location.evidence
"""

from regionguard import _compiled

_compiled.install()   # before the compiled modules are imported: compiled, or their sources

from regionguard.core.decision import Action, Decision, Engine
from regionguard.core.errors import ConfigError, PolicyError, Problem, RegionguardError
from regionguard.core.evidence import Evidence, Location
from regionguard.core.locator import Locator
from regionguard.core.policy import Policy, Rules, allowed_regions, load_policy, parse_policy
from regionguard.core.regions import Catalogue, Region, load_catalogue
from regionguard.core.zoom import Classification, ZoomCatalogue

__version__ = "0.1.0"

__all__ = [
    "Action", "Catalogue", "Classification", "ConfigError", "Decision", "Engine", "Evidence",
    "Locator", "Location", "Policy", "PolicyError", "Problem", "Region", "RegionguardError",
    "Rules", "ZoomCatalogue", "allowed_regions", "load_catalogue", "load_policy", "parse_policy",
]
