"""The DNS front end: `regionguard dns`, a filtering DNS forwarder, and the answer filter that
the mitmproxy DNS addon shares.
"""
