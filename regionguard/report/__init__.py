"""Offline: audit logs summarised for people, as text, HTML or PNG.
"""
