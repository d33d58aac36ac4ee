"""The DNS front end: `regionguard dns`, a filtering DNS forwarder, and the answer filter the
mitmproxy DNS addon (regionguard.mitm.dns_filter) shares. Layered, each module one idea:

- `wire`: DNS messages as bytes: parse a plain query, scan an answer's records, cut records,
  build the server's own messages (upstream queries, SERVFAIL, error replies); CacheKey.
- `parsed`: the same for what wire leaves to dnspython: a parsed query's CacheKey, a cached
  answer re-addressed to it.
- `cache`: the byte-bounded caches of finished messages whose TTLs count down.
- `filter`: the one answer filter (dnspython messages or wire scans), the reroute answer and the
  answer's audit record, used by the server and the mitmproxy addon alike.
- `miss`: one miss as logic with no I/O (what to ask upstream, what the answer is, the reroute),
  driven by the server and by the mitmproxy addon alike.
- `upstream`: the upstream client (UDP, TCP on truncation, failover, one shared timeout) behind
  a small transport seam.
- `server`: the sockets: UDP and TCP fronts, the two caches, the one miss path driving `Miss`.
- `tcp`: the open DNS-over-TCP connections, bounded in total and per client.
- `forwarded`: who asked, behind a balancer: the client a trusted forwarder names (PROXY v2
  header or EDNS Client Subnet), believed from `--trusted-forwarder` networks only.
- `proxyproto`: the PROXY protocol v2 header, bytes in, (client address, payload) out.
- `cli`: `regionguard dns`: its options checked into the server's Config, start-up and shutdown
  (the arguments themselves are defined in regionguard/cli.py, with every command's).
- `resolve`: name resolution for the other front ends (the policy's static hosts, then DNS).
- `metrics`: `--metrics`: the server's Prometheus families, read from its tallies at scrape
  time, its readiness and its endpoint (regionguard.metrics).

Imports go one way: cli -> server -> miss -> filter -> wire; server -> parsed -> wire;
server -> upstream, cache, tcp, forwarded -> proxyproto, wire; cli -> metrics -> server; the
mitmproxy addon -> miss, parsed.
"""

DEFAULT_PORT = 5353   # `regionguard dns`'s port when none is given (53 needs root)
