"""The pure core: where a Zoom endpoint is, and what the policy says about it.

regions (the catalogue), policy (the checked policy file), zoom (Zoom's names, ranges and
service classes), sources and evidence (what each source says), locator (layered evidence into
one Location), prefixes and hostnames (the lookup structures), learned (what DNS answers taught),
rtt and physics (round-trip times measured, and the distance bound they prove), decision (the
Engine: one Decision per endpoint, rules at the top of the module), reload (an engine swapped
whole when the policy file or the data set changes; the event-loop half, reading off the loop,
is regionguard.async_reload), paths and datasets (where the bundled configuration is, and which
data set is in force: one `regionguard data update` installed, else the bundled snapshot),
errors and safeyaml.

"Pure" means no network, no event loop and no front end: nothing here imports mitmproxy,
asyncio, prometheus_client or a module of the package outside the core, not even inside a
function (tests/test_layout.py checks the sources). It is not free of I/O: it reads the bundled
configuration and data files, and learned and rtt keep sqlite files in the state directory
(learned writes them from a background thread of its own; rtt in batches, at most one a second).
The front ends (regionguard.dns, regionguard.mitm, regionguard.nft) and the offline tools
(replay, report, explain) sit on top.
"""
