"""The exit codes of every `regionguard` command, in one place.

The command modules return these; `regionguard/cli.py` maps the errors it catches onto them.
Engine and command modules import this module, never the command line itself.
"""

from __future__ import annotations

EXIT_OK = 0        # success (explain: every target allowed, monitored or not Zoom's)
EXIT_BLOCKED = 1   # explain, replay: at least one target would be blocked
EXIT_CONFIG = 2    # usage error, or an invalid policy/configuration/option
EXIT_RESOLVE = 3   # explain: a target could not be resolved
EXIT_NO_ANSWER = 3  # probe: some address answered no probe (nothing measured)
EXIT_INPUT = 4     # replay, report, coverage: some input unreadable (the rest was processed)
EXIT_LISTEN = 4    # dns: cannot listen on the address asked for
EXIT_DATA = 5      # data update/rollback failed: the data in force is unchanged
EXIT_NFT = 6       # nft: not root, nft not installed, or the kernel refused the ruleset (unchanged)
EXIT_INTERRUPTED = 130   # stopped with Ctrl-C (128 + SIGINT), as shells report it

# What each code means across the commands, as `regionguard --help` lists it (cli.py renders it).
MEANINGS: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success (explain: every target allowed, monitored or not Zoom's)"),
    (EXIT_BLOCKED, "explain: at least one target would be blocked; invite: an entry outside the "
                   "policy"),
    (EXIT_CONFIG, "usage error, or an invalid policy/configuration (the message names file, field "
                  "and fix)"),
    (EXIT_RESOLVE, "explain: a target could not be resolved; probe: an address answered no probe"),
    (EXIT_INPUT, "replay, report, coverage, invite: some input unreadable (the rest was "
                 "processed); dns: cannot listen"),
    (EXIT_DATA, "data: the update or rollback failed (the data in force is unchanged)"),
    (EXIT_NFT, "nft: not root, nft not installed, or the kernel refused the ruleset (nothing "
               "changed)"),
    (EXIT_INTERRUPTED, "stopped with Ctrl-C"),
)

__all__ = ["EXIT_BLOCKED", "EXIT_CONFIG", "EXIT_DATA", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_LISTEN",
           "EXIT_NFT", "EXIT_NO_ANSWER", "EXIT_OK", "EXIT_RESOLVE", "MEANINGS"]
