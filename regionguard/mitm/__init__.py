"""The mitmproxy front end: regionguard as mitmproxy addons, one small class per concern, and
`regionguard run`, which starts mitmproxy with them in its addon chain.

- `addon`: `make_addons()`, a fresh set of the addons below in chain order (what `regionguard
  run` and addons/regionguard_addon.py load);
- `policy_loader`: `PolicyLoader`, the addon named "regionguard": declares the options
  (`options` is their table and their checks), loads and reloads the policy, opens the audit log;
- `zoom_guard`: `ZoomGuard`, put in mitmproxy's own chain, blocks Zoom whenever no policy is in
  force (a script unloaded, broken, or not configured);
- `gateway`: `GatewayAccess`, who may use the proxy (`gateway.clients`);
- `tls_passthrough`: `TlsPassthrough`, which TLS connections may be intercepted (never Zoom's);
- `signalling`: `RoomConnectorSignalling`, SIP and H.323 on the room-connector ports relayed as
  raw TCP (mitmproxy would take a SIP request for HTTP);
- `pac_server`: `PacServer`, the PAC file at the proxy's own address (`pac` writes it);
- `connections`: `ConnectionEnforcer`, each connection decided (`enforce`) and pinned, or blocked;
  `verdicts` is what a verdict does to a flow, `connection_state` what is remembered on
  mitmproxy's connection objects;
- `dns_missing`: the DNS addons (`dns_filter`), or a stand-in refusing DNS when they cannot load;
- `metrics`: `Metrics`, the Prometheus endpoint (`regionguard_metrics`, `run --metrics`), from
  `running` to `done`;
- `console_summary`: `ConsoleSummary`, a console line every few seconds counting the decisions
  (allowed, blocked, ...), so a user sees allowed traffic flow without a line per connection;
- `relay_memory`: `RelayMemory`, a relayed TCP or UDP flow keeps only its last message (mitmproxy
  would hold a gateway's media for the flow's whole life), unless flows are saved;
- `run`: `regionguard run`.
"""
