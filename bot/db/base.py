"""The declarative base every model derives from, and the conventions they share.

Constraint names follow one convention so Alembic can alter and drop them on both backends
(SQLite batch mode recreates tables and needs names). Models that hold encrypted secrets list the
columns in `__secret_columns__`; the vault's key rotation discovers them from the mapper registry,
so a new secret column is rotated without touching the vault.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on MariaDB, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only kind stored)."""
    return datetime.now(UTC)


_NAIVE = "naive datetimes are ambiguous; pass an aware UTC datetime"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: both backends drop tzinfo, so we restore it."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        # MariaDB/MySQL DATETIME drops fractions of a second unless asked for them: leases,
        # heartbeats and log order need microseconds, as SQLite keeps them.
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(_NAIVE)
        return value.astimezone(UTC).replace(tzinfo=None)

    def bind_processor(self, dialect: Any) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite stores text: this writes the text SQLAlchemy's DATETIME writes (its default
        # storage format, microseconds always present) in one C call instead of two processors
        # and a %-format per value; a queue write binds a dozen datetimes.
        # A write binds the same moment many times (`now` of a group commit on every row): the
        # last value's text is kept, by identity (a tuple, so a reader never sees half of it).
        last: tuple[datetime | None, str | None] = (None, None)

        def process(value: datetime | None) -> str | None:
            nonlocal last
            if value is None:
                return None
            seen, text = last
            if value is seen:
                return text
            if value.tzinfo is UTC:
                text = value.isoformat(" ", "microseconds")[:-6]  # without its "+00:00"
            elif value.tzinfo is None:
                raise ValueError(_NAIVE)
            else:
                text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
            last = (value, text)
            return text

        return process

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Root of all ORM models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }
    __secret_columns__: ClassVar[tuple[str, ...]] = ()


class TimestampMixin:
    """created_at / updated_at maintained by the ORM in UTC."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )
