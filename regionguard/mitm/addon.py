"""regionguard's mitmproxy addons, in the order they go into mitmproxy's chain.

    mitmdump -s addons/regionguard_addon.py --set regionguard_policy=config/policy.yaml

`regionguard run` adds `make_addons()` to mitmproxy's own chain; the script above does the same
as a `-s` script. Each call gives fresh instances: mitmproxy loads a script's addons anew on
every reload. The order matters where two addons answer one hook: the policy addon configures
first (so the others see only options it accepted), the PAC file is served before a request is
decided, and DNS comes last.
"""

from __future__ import annotations

from regionguard.mitm.connections import ConnectionEnforcer
from regionguard.mitm.console_summary import ConsoleSummary
from regionguard.mitm.dns_missing import dns_addons
from regionguard.mitm.gateway import GatewayAccess
from regionguard.mitm.metrics import Metrics
from regionguard.mitm.pac_server import PacServer
from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.relay_memory import RelayMemory
from regionguard.mitm.signalling import RoomConnectorSignalling
from regionguard.mitm.tls_passthrough import TlsPassthrough


def make_addons() -> list:
    """A fresh set of the proxy's addons: the policy, who may connect, TLS, room-connector
    signalling as raw TCP, the PAC file, connection enforcement, then DNS; the metrics endpoint
    and the console summary (no per-connection hook), and the relayed flows' memory, last."""
    policy = PolicyLoader()
    connections = ConnectionEnforcer(policy)
    return [policy, GatewayAccess(policy), TlsPassthrough(policy), RoomConnectorSignalling(policy),
            PacServer(policy), connections, *dns_addons(), Metrics(policy, connections.prober),
            ConsoleSummary(policy), RelayMemory()]
