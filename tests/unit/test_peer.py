"""The client address of the AuditEvent: the socket peer, or X-Forwarded-For from a trusted proxy only."""

from __future__ import annotations

from fhir_server.api.peer import client_address
from fhir_server.settings import Settings

PROXY = frozenset({"10.0.0.1", "10.0.0.2"})


def test_an_untrusted_peer_is_recorded_whatever_it_forwards() -> None:
    assert client_address("127.0.0.1", ["203.0.113.9"], frozenset()) == "127.0.0.1"
    assert client_address("192.0.2.7", ["203.0.113.9"], PROXY) == "192.0.2.7"


def test_a_trusted_proxy_is_believed_up_to_the_first_untrusted_hop() -> None:
    assert client_address("10.0.0.1", ["203.0.113.9"], PROXY) == "203.0.113.9"
    # The client may send its own X-Forwarded-For: only the hop the proxies appended counts.
    assert client_address("10.0.0.1", ["6.6.6.6, 203.0.113.9", "10.0.0.2"], PROXY) == "203.0.113.9"


def test_a_trusted_proxy_without_forwarding_is_the_address() -> None:
    assert client_address("10.0.0.1", [], PROXY) == "10.0.0.1"
    assert client_address(None, ["203.0.113.9"], PROXY) is None


def test_the_setting_is_a_comma_separated_list() -> None:
    settings = Settings(trusted_proxies=" 10.0.0.1, ,10.0.0.2 ")
    assert settings.trusted_proxy_addresses == PROXY
    assert Settings().trusted_proxy_addresses == frozenset()
