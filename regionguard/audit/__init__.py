"""The audit log, shared by every front end: one JSON line per decision (line), written by a
background thread that never blocks an answer and reports what it had to drop (log).
"""
