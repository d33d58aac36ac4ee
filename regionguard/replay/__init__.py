"""Offline: recorded connections (mitmproxy flows, HAR, pcap/pcapng, audit logs) decided again
under a policy, as a report or a test.
"""

from regionguard.replay.replay import DEFAULT_FAIL_ON, ReplayResult, replay

__all__ = ["DEFAULT_FAIL_ON", "ReplayResult", "replay"]
