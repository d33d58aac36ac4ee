"""What regionguard remembers about one connection, kept on mitmproxy's own connection objects.

A verdict reached at the HTTP level (a CONNECT, a plain request) is needed again when mitmproxy
opens the server connection for it, and a keep-alive client asks for the same destinations again.
Hung off the `Client` and `Server` objects, that state goes away with them; the disconnect hooks
drop it early, since mitmweb keeps flows (and their connections) for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regionguard.mitm.enforce import Verdict

_CLIENT_ATTR = "regionguard_state"
_SERVER_ATTR = "regionguard_verdict"

Destination = tuple[str, int]   # (host, port) as the request or server connection names it


@dataclass(slots=True)
class ClientState:
    # Decided at the HTTP level, under the host the server connection will have: popped by
    # `server_connect` (or the upstream CONNECT), which pins without deciding and auditing twice.
    decided: dict[Destination, Verdict] = field(default_factory=dict)
    # Plain-HTTP destinations allowed on this keep-alive connection, with the engine that
    # allowed them: decided once per connection, like a CONNECT tunnel, until the policy changes.
    kept: dict[Destination, tuple[Any, Verdict]] = field(default_factory=dict)


def client_state(client: Any) -> ClientState:
    """This client connection's state, created on first use."""
    state = getattr(client, _CLIENT_ATTR, None)
    if state is None:
        state = ClientState()
        setattr(client, _CLIENT_ATTR, state)
    return state


def peek_client_state(client: Any) -> ClientState | None:
    """This client connection's state, or None when nothing was remembered for it."""
    return getattr(client, _CLIENT_ATTR, None)


def forget_client(client: Any) -> None:
    if getattr(client, _CLIENT_ATTR, None) is not None:
        setattr(client, _CLIENT_ATTR, None)


def server_verdict(server: Any) -> Verdict | None:
    """The verdict this server connection was opened under, if regionguard decided it."""
    return getattr(server, _SERVER_ATTR, None)


def set_server_verdict(server: Any, verdict: Verdict | None) -> None:
    setattr(server, _SERVER_ATTR, verdict)
