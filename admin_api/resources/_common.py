"""Field types shared by the resource models (bounded, so hostile input is refused early)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from admin_api.resource import ReadModel

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Key = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
ShortKey = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(max_length=65_535)]
LongText = Annotated[str, StringConstraints(max_length=1_000_000)]
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]
Priority = Annotated[int, Field(ge=-1000, le=1000)]


def _json_size(value: Any) -> Any:
    import json

    if len(json.dumps(value, default=str)) > 256 * 1024:
        raise ValueError("the JSON value is larger than 256 KiB")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_size)]
JsonList = Annotated[list[Any], AfterValidator(_json_size)]


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


Url = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=8, max_length=500, pattern=r"^https?://[^\s]+$"),
    AfterValidator(_http_url),
]


class Timestamps(ReadModel):
    """id, created_at and updated_at, common to most rows."""

    id: int
    created_at: datetime
    updated_at: datetime
