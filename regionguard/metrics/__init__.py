"""Prometheus metrics and health endpoints shared by both front ends (`regionguard dns`,
`regionguard run`), with prometheus-client.

- `address`: the `--metrics HOST:PORT` option, checked (loopback unless told otherwise).
- `endpoint`: the HTTP endpoint, in a thread of its own: `/metrics`, `/healthz`, `/readyz`.
- `common`: what both front ends count (decisions, audit lines, policy reloads and version,
  dataset dates, learned evidence), read at scrape time.

The hot paths never call prometheus-client: they bump plain ints and dicts they keep anyway
(the audit Counters, the caches' hits, the upstream client's tallies), and a custom Collector
turns them into metric families when Prometheus scrapes. Each front end's own collector lives
beside it (regionguard.dns.metrics, the `Metrics` addon in regionguard.mitm.metrics). The core
never imports this package.
"""
