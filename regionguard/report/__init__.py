"""Offline: audit logs summarised for people, as text, HTML or PNG (`regionguard report`).

summary is the model: `summarise` reads audit logs as a stream into a `Summary` of bounded
totals, and holds what every renderer shares (ACTION_ORDER, STOPPED, COLOURS). The renderers
text, html and png each import the model and nothing of each other; png needs matplotlib (the
optional `report` extra) and is imported only for --png. command is `regionguard report` itself
(options in regionguard/cli.py): it reads, renders and maps failures to exit codes.
"""
