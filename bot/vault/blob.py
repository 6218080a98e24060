"""The sealed-blob byte format, and the associated data that binds a blob to its row.

Version 1 layout (all lengths in bytes)::

    offset      size  field
    0           2     magic b"OV" ("orchestrator vault"), so a stray value is recognised as not a blob
    2           1     format version, 0x01
    3           1     n = length of the key id (1..64)
    4           n     key id, ASCII [A-Za-z0-9._-]
    4+n         12    nonce, fresh from os.urandom for every seal
    16+n        ≥16   AES-256-GCM ciphertext followed by its 16-byte tag

The header is not encrypted but is authenticated: the associated data (AD) fed to AES-GCM is

    b"orchestrator-vault\\0" || version || lp(table) || lp(column) || lp(str(row id)) || lp(key id)

where lp(x) is a 4-byte big-endian length followed by the UTF-8 bytes. Length prefixes make the
encoding canonical (no two different tuples encode alike), so a blob copied into another row,
column or table, or relabelled with another key id or version, fails authentication instead of
decrypting. The row id is rendered with `str()`, so the integer 5 and the string "5" bind alike,
whichever type the driver hands back.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

MAGIC = b"OV"
VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_KEY_ID_LENGTH = 64
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_AD_DOMAIN = b"orchestrator-vault\x00"


class BlobFormatError(ValueError):
    """The bytes are not a well-formed version-1 blob (the vault turns this into IntegrityError)."""


@dataclass(frozen=True, slots=True)
class ParsedBlob:
    """A blob split into its fields; nothing here is secret, the ciphertext stays encrypted."""

    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes


def is_valid_key_id(key_id: str) -> bool:
    """Whether `key_id` can be written into a blob header."""
    return bool(KEY_ID_PATTERN.match(key_id))


def pack(*, key_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    """Assemble a version-1 blob from its parts."""
    if not is_valid_key_id(key_id):
        raise ValueError(f"invalid key id {key_id!r}")
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    encoded_id = key_id.encode("ascii")
    return MAGIC + bytes((VERSION, len(encoded_id))) + encoded_id + nonce + ciphertext


def parse(blob: bytes) -> ParsedBlob:
    """Split a blob into its fields, refusing anything that is not a complete version-1 blob."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise BlobFormatError(f"expected bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if len(data) < 4:
        raise BlobFormatError(f"only {len(data)} bytes long, too short to be a sealed value")
    if data[:2] != MAGIC:
        raise BlobFormatError("does not start with the vault's magic bytes (not a sealed value)")
    version = data[2]
    if version != VERSION:
        raise BlobFormatError(f"format version {version} is not supported by this release")
    id_length = data[3]
    if not 1 <= id_length <= MAX_KEY_ID_LENGTH:
        raise BlobFormatError(f"key id length {id_length} is out of range")
    minimum = 4 + id_length + NONCE_SIZE + TAG_SIZE
    if len(data) < minimum:
        raise BlobFormatError(f"truncated: {len(data)} bytes, a sealed value needs at least {minimum}")
    raw_id = data[4 : 4 + id_length]
    try:
        key_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        raise BlobFormatError("key id is not ASCII") from None
    if not is_valid_key_id(key_id):
        raise BlobFormatError("key id contains characters a key id cannot have")
    nonce_start = 4 + id_length
    return ParsedBlob(
        version=version,
        key_id=key_id,
        nonce=data[nonce_start : nonce_start + NONCE_SIZE],
        ciphertext=data[nonce_start + NONCE_SIZE :],
    )


def associated_data(*, version: int, table: str, column: str, row_id: int | str, key_id: str) -> bytes:
    """The canonical encoding of what a blob is bound to (see the module docstring)."""
    parts = [_AD_DOMAIN, bytes((version,))]
    for field in (table, column, str(row_id), key_id):
        encoded = field.encode("utf-8")
        parts.append(struct.pack(">I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)
