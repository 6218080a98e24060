"""Which header a source credential becomes, and which redirect hops may carry it."""

from __future__ import annotations

import base64

import pytest

from bot.knowledge.auth import auth_from_fields
from bot.knowledge.errors import CredentialUnusable
from bot.knowledge.fetch import may_carry_credentials


@pytest.mark.parametrize(("previous", "target", "carries"), [
    ("https://docs.example.org/a", "https://docs.example.org/b?x=1", True),
    ("https://Docs.Example.org/a", "https://docs.example.org:443/b", True),
    ("http://docs.example.org/a", "https://docs.example.org/a", True),  # upgrade on the same host
    ("https://docs.example.org/a", "http://docs.example.org/a", False),  # downgrade
    ("http://docs.example.org:8080/a", "https://docs.example.org/a", False),
    ("https://docs.example.org/a", "https://docs.example.org:8443/a", False),
    ("https://docs.example.org/a", "https://evil.example.org/a", False),
    ("https://docs.example.org/a", "https://docs.example.org.evil.test/a", False),
])
def test_the_credential_stays_on_its_origin(previous: str, target: str, carries: bool) -> None:
    assert may_carry_credentials(previous, target) is carries


def test_fields_become_basic_bearer_or_a_named_header() -> None:
    basic = auth_from_fields({"username": "ana", "password": "pw-123456"}, {}, 1)
    assert (basic.header, basic.value.get_secret_value()) == (
        "Authorization", "Basic " + base64.b64encode(b"ana:pw-123456").decode())
    bearer = auth_from_fields({"api_key": "k-second", "access_token": "t-first"}, {}, 2)
    assert bearer.value.get_secret_value() == "Bearer t-first"  # an OAuth token set wins
    named = auth_from_fields({"api_key": "k-123456"}, {"header_name": "X-API-Key"}, 3)
    assert (named.header, named.value.get_secret_value()) == ("X-API-Key", "k-123456")
    in_secret = auth_from_fields({"api_key": "k-123456", "header_name": "X-Token"}, {"header_name": "X-API-Key"}, 4)
    assert in_secret.header == "X-Token"
    assert "k-123456" not in repr(named) and "k-123456" not in str(named)


@pytest.mark.parametrize(("fields", "metadata", "words"), [
    ({"client_id": "x"}, {}, "neither username and password nor a token"),
    ({"username": "a:b", "password": "pw-123456"}, {}, "RFC 7617"),
    ({"token": "abc\r\nX-Injected: 1"}, {}, "line break"),
    ({"token": "abc123456"}, {"header_name": "Content-Length"}, "controls itself"),
    ({"token": "abc123456"}, {"header_name": "X Bad"}, "not a valid HTTP header name"),
    ({"token": "abc123456"}, {"header_name": 5}, "not a valid HTTP header name"),
])
def test_unusable_fields_are_refused_without_their_value(
    fields: dict[str, object], metadata: dict[str, object], words: str,
) -> None:
    with pytest.raises(CredentialUnusable) as caught:
        auth_from_fields(fields, metadata, 9)
    assert words in caught.value.message
    for value in fields.values():
        assert str(value) not in caught.value.message


def test_a_malformed_redirect_target_carries_nothing() -> None:
    assert not may_carry_credentials("https://docs.example.org/a", "https://docs.example.org:99999/a")
    assert not may_carry_credentials("https://docs.example.org:bad/a", "https://docs.example.org:bad/a")
