"""Offline: recorded connections (mitmproxy flows, HAR, pcap/pcapng, audit logs) decided again
under a policy, as a report or a test (`regionguard replay`, and the pytest plugin's
`regionguard_replay` fixture).

pcap reads packet captures into flows, with SNI and the captures' own DNS answers; flows reads
every input format into Connections (and audit logs as lines, for regionguard.report); replay
decides each distinct connection with the core's Engine and holds the result, its text, JSON and
JUnit forms, and the command itself (options in regionguard/cli.py). Nothing here opens a
network connection or imports regionguard's front ends (.mitm files are read with mitmproxy's
own io module).

The package re-exports what a library user or the pytest plugin needs: `replay()`, its
`ReplayResult` (whose `assert_complies()` raises `ReplayComplianceError`) and `DEFAULT_FAIL_ON`.
The function shadows its module's name on the package: import the module's other names from
regionguard.replay.replay.
"""

from regionguard.replay.replay import DEFAULT_FAIL_ON, ReplayComplianceError, ReplayResult, replay

__all__ = ["DEFAULT_FAIL_ON", "ReplayComplianceError", "ReplayResult", "replay"]
