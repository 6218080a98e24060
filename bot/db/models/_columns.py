"""Column types and helpers shared by the models, chosen so one schema fits SQLite and MariaDB.

MariaDB caps an index at 3072 bytes (768 utf8mb4 characters) and cannot index TEXT without a
prefix, so every indexed string here is a VARCHAR of at most 255 characters; free text that may be
long (prompts, answers, documents) is LONGTEXT on MariaDB, where TEXT would stop at 64 KiB.
States with a closed set of values are non-native enums (a VARCHAR plus validation in Python), so
adding a state is a code change, never an ALTER TABLE; kinds that plugins extend stay plain strings.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import BigInteger, Enum, ForeignKey, Index, Integer, LargeBinary, Numeric, String, Text, text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import MappedColumn, mapped_column

from bot.db.base import BigIntPK

# Foreign keys match the referenced primary key's type on both backends.
BigIntFK = BigInteger().with_variant(Integer(), "sqlite")
# Long free text: TEXT on SQLite (unbounded), LONGTEXT on MariaDB.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# Sealed secrets (vault envelopes): a BLOB is 64 KiB on MariaDB, MEDIUMBLOB leaves room.
SecretBlob = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
# Money and credits: exact decimals, never floats.
Money = Numeric(18, 6)
# Identifier strings that are indexed (names, keys, platform ids).
Key = String(255)
ShortKey = String(64)


def primary_key() -> MappedColumn[Any]:
    """An autoincrementing integer id (BIGINT on MariaDB, rowid alias on SQLite)."""
    return mapped_column(BigIntPK, primary_key=True, autoincrement=True)


def foreign_key(target: str, *, ondelete: str, nullable: bool = False, index: bool = False) -> MappedColumn[Any]:
    """A foreign key column; `ondelete` is explicit because each relation deletes differently."""
    return mapped_column(BigIntFK, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=index)


def enum_column(enum_type: type[enum.Enum], *, default: enum.Enum | None = None, **kwargs: Any) -> Any:
    """A VARCHAR(32) holding an enum's values (not names), validated on write."""
    column_type = Enum(
        enum_type,
        native_enum=False,
        create_constraint=False,
        length=32,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )
    if default is not None:
        kwargs.setdefault("server_default", str(default.value))
        kwargs.setdefault("default", default)
    return mapped_column(column_type, **kwargs)


def sparse_index(*columns: str, name: str | None = None) -> Index:
    """An index on a column that is NULL in most rows when they are written (an optional link, a lease).

    On SQLite it leaves the NULL rows out (a partial index): each index an insert touches is one
    more page in the commit's write-ahead log, and a task's submit wrote 25 of them. Lookups
    (`col = ?`, `col < ?`) still use it, since they imply `col IS NOT NULL`. MariaDB has no
    partial indexes and indexes every row.
    """
    return Index(name, *columns, sqlite_where=text(f"{columns[0]} IS NOT NULL"))
