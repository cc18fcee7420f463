"""The client network address recorded in AuditEvents: the socket peer, unless a trusted proxy sent it.

`X-Forwarded-For` is believed only when the peer is one of `FHIR_TRUSTED_PROXIES`; the address
recorded is then the nearest hop that is not itself a trusted proxy (docs/configuration.md). Any
other caller could write whatever address it likes into the audit trail otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: frozenset[str]) -> str | None:
    """`forwarded_for`: every `X-Forwarded-For` header value, in the order received."""
    if peer is None or peer not in trusted:
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else peer
