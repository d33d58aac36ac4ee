"""regionguard's DNS filter alone, for `mitmdump -s` (the package must be importable):

    mitmdump --mode dns@5353 -s addons/dns_filter.py --set regionguard_policy=config/policy.yaml

addons/regionguard_addon.py includes it.
"""

from regionguard.mitm.dns_filter import make_addons

addons = make_addons()
