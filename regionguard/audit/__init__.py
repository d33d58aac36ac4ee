"""The audit log, shared by every front end: one JSON line per decision, in one format whoever
wrote it (the proxy addon, the DNS filter).

line encodes a decision and its context as the JSON text of one line (on the DNS hot path, so
built without a dict); log appends lines from a background thread that never blocks an answer,
caps and rotates the file, and counts and reports the lines it had to drop. It depends on the
core only (a Decision is what it records); the offline tools read what it wrote
(regionguard.replay.flows reads audit logs; regionguard.report summarises them).
"""
