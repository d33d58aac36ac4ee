"""regionguard's mitmproxy addons, for `mitmdump -s` (the package must be importable):

    mitmdump -s addons/regionguard_addon.py --set regionguard_policy=config/policy.yaml

`regionguard run` loads the same addons without this file. Named unlike the package: mitmproxy
puts this directory on sys.path, where a `regionguard.py` would hide the package.
"""

from regionguard.mitm.addon import make_addons

addons = make_addons()
