"""The pure core: where a Zoom endpoint is, and what the policy says about it.

regions (the catalogue), policy (the checked policy file), zoom (Zoom's names, ranges and
service classes), sources and evidence (what each source says), locator (layered evidence into
one Location), prefixes and hostnames (the lookup structures), learned (what DNS answers taught),
decision (the Engine: one Decision per endpoint, rules at the top of the module), reload (an
engine swapped whole when the policy file or the data set changes), paths and datasets (where the
bundled configuration is, and which data set is in force: one `regionguard data update`
installed, else the bundled snapshot), errors and safeyaml.

Nothing here imports mitmproxy or asyncio (tests/test_layout.py checks it): the front ends
(regionguard.dns, regionguard.mitm) and the offline tools (replay, report, explain) sit on top.
"""
