"""The mitmproxy front end: the addons that enforce the policy on proxied connections and DNS,
their options, and `regionguard run`, which starts mitmproxy with them loaded.
"""
