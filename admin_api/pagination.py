"""One pagination scheme for every list: keyset cursors, a total, and RFC 8288 Link headers.

Keyset (not offset) pagination keeps pages consistent while rows are inserted: a cursor names the
last row seen by its sort value and id, so a new row can never push an already-seen row onto the
next page or make one be skipped. The cursor is opaque to clients (base64 of JSON) and is checked
against the sort it was issued for.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import InstrumentedAttribute
from yarl import URL

from admin_api.problems import InvalidCursor

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# json.dumps with `separators` builds a new encoder per call; one encoder with the same settings
# writes the same text.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def encode_cursor(*, sort: str, value: Any, row_id: int) -> str:
    """An opaque cursor pointing just after the row with this sort value and id.

    Every page with a next page issues one, so the usual shapes (an integer, string or missing
    sort value) are written directly, as the same compact JSON the encoder writes for them
    (`encode_basestring_ascii` is what it escapes strings with); anything else goes through it.
    """
    kind = type(value)
    if kind is not int and kind is not str and value is not None:
        value = _plain(value)
        kind = type(value)
    if type(sort) is str and type(row_id) is int and (kind is int or kind is str or value is None):
        # Exact ints (not bools, not subclasses) format as repr() does, which is what JSON writes.
        scalar = "null" if value is None else encode_basestring_ascii(value) if kind is str else value
        text = f"[{encode_basestring_ascii(sort)},{scalar},{row_id}]"
    else:
        text = _COMPACT.encode([sort, value, row_id])
    # base64.urlsafe_b64encode, without its two layers of Python calls.
    return binascii.b2a_base64(text.encode(), newline=False).translate(_URLSAFE).decode().rstrip("=")


def decode_cursor(cursor: str, *, sort: str, python_type: type) -> tuple[Any, int]:
    """The (sort value, id) a cursor names; InvalidCursor when it is not one we issued for `sort`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        issued_sort, value, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor("the cursor is not one this API issued") from None
    if issued_sort != sort:
        raise InvalidCursor("the cursor was issued for another sort order; start again without it")
    if not isinstance(row_id, int) or isinstance(row_id, bool):
        raise InvalidCursor("the cursor is not one this API issued")
    try:
        if value is None:
            return None, row_id
        if python_type is datetime:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError("naive")
            return parsed, row_id
        if python_type is Decimal:
            return Decimal(value), row_id
        if issubclass(python_type, bool):
            if not isinstance(value, bool):
                raise TypeError("not a bool")
            return value, row_id
        if issubclass(python_type, int | float | str):
            if not isinstance(value, int | float | str) or isinstance(value, bool):
                raise TypeError("wrong type")
            return python_type(value), row_id
    except (ValueError, TypeError, InvalidOperation):
        raise InvalidCursor("the cursor is not one this API issued") from None
    raise InvalidCursor("the cursor is not one this API issued")


def after_cursor(
    column: InstrumentedAttribute[Any], pk: InstrumentedAttribute[Any], *, value: Any, row_id: int,
    descending: bool,
) -> ColumnElement[bool]:
    """The WHERE clause selecting rows strictly after (value, id) in the sort order."""
    if column is pk:
        return pk < row_id if descending else pk > row_id
    if descending:
        return or_(column < value, and_(column == value, pk < row_id))
    return or_(column > value, and_(column == value, pk > row_id))


def link_header(url: URL, *, next_cursor: str | None) -> str:
    """RFC 8288 links to the first and, when there is one, the next page (relative URLs).

    A pure function of its arguments, remembered for recent ones: rebuilding the URLs through
    yarl costs more than the rest of a page's response, and clients repeat the same requests.
    """
    return _link_header(url, next_cursor)


@lru_cache(maxsize=1024)
def _link_header(url: URL, next_cursor: str | None) -> str:
    relative = url if not url.is_absolute() else url.relative()
    first = relative.without_query_params("cursor")
    links = [f'<{first}>; rel="first"']
    if next_cursor is not None:
        links.append(f'<{relative.update_query(cursor=next_cursor)}>; rel="next"')
    return ", ".join(links)
