"""The kernel front end: `regionguard nft`, the policy compiled to the nftables table
`inet regionguard`, so connections to bare addresses are decided in the kernel too.

- `ruleset`: the pure step, policy and evidence into the table's JSON, computed by the core's
  Engine (never a second implementation of the decision);
- `apply`: running `nft`: load, check, delete and read the table, each change one transaction;
- `watch`: `--watch`, the table kept in step with the policy, the data set and what was learned;
- `metrics`: the kernel's counters and the watcher's, for `--watch --metrics`;
- `command`: the command itself (its options are in regionguard/cli.py).
"""
