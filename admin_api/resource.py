"""A resource is declared, not written: models, filters and sorts in; five CRUD routes out.

Each resource module declares a `Resource` (ORM model, pydantic Read/Create/Update models, filters,
sortable fields) and calls `crud_routes`, which registers list/get/create/update/delete through
`endpoint`, so validation and the OpenAPI document come from the same declaration. Referenced ids
are checked generically: any body field that maps to a column with a foreign key must name a row
that exists, or the request fails with 422 reference-not-found before anything is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from functools import cached_property
from operator import itemgetter
from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, create_model
from sqlalchemy import ColumnElement, String, bindparam, func, inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from admin_api.endpoint import Ctx, Reply, endpoint
from admin_api.pagination import DEFAULT_LIMIT, MAX_LIMIT, after_cursor, decode_cursor, encode_cursor, link_header
from admin_api.problems import (
    Conflict,
    InvalidCursor,
    NotFound,
    ReferenceNotFound,
    ValidationFailed,
)
from admin_api.projection import sqlite_json_projection
from admin_api.state import READER, SESSIONS
from bot.db.base import Base

FilterOp = Literal["eq", "ge", "le", "contains"]
# A hook that may change the values about to be written (seal a secret, derive a field) or refuse.
PrepareHook = Callable[[Ctx, AsyncSession, dict[str, Any], Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Filter:
    """A query parameter filtering the list: column `op` value."""

    column: str
    type: Any
    op: FilterOp = "eq"
    description: str = ""


class ApiModel(BaseModel):
    """Base of request bodies: unknown fields are refused, so typos are not silently ignored."""

    model_config = ConfigDict(extra="forbid", str_max_length=100_000)


class ReadModel(BaseModel):
    """Base of responses: built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


@dataclass
class Resource:
    """The declaration of one collection at `/{name}`."""

    name: str
    tag: str
    model: type[Base]
    read: type[BaseModel]
    create: type[BaseModel] | None = None
    update: type[BaseModel] | None = None
    filters: Mapping[str, Filter] = field(default_factory=dict)
    sort_fields: Sequence[str] = ("id",)
    deletable: bool = True
    read_scope: str = "read"
    write_scope: str = "write"
    columns: Mapping[str, str] = field(default_factory=dict)  # API field -> ORM attribute when they differ
    prepare: PrepareHook | None = None
    to_read: Callable[[Any], BaseModel] | None = None
    after_create: Callable[[Ctx, Any], Awaitable[None]] | None = None  # runs once the row is committed
    singular: str = ""

    def __post_init__(self) -> None:
        for name in self.sort_fields:
            column = self.attr(name).property.columns[0]
            if column.nullable and name != "id":
                raise ValueError(f"{self.name}: cannot sort on nullable column {name}")

    @property
    def label(self) -> str:
        """The singular noun used in messages."""
        return self.singular or self.name.rstrip("s")

    def attr(self, api_name: str) -> InstrumentedAttribute[Any]:
        """The ORM attribute behind an API field name."""
        attribute: InstrumentedAttribute[Any] = getattr(self.model, self.columns.get(api_name, api_name))
        return attribute

    @cached_property
    def pk(self) -> InstrumentedAttribute[Any]:
        """The primary key attribute."""
        return self.attr("id")

    @cached_property
    def columns_selected(self) -> list[Any]:
        """Every mapped column, labelled with its attribute name (so rows read like ORM objects)."""
        mapper = inspect(self.model)
        return [prop.columns[0].label(prop.key) for prop in mapper.column_attrs]

    async def fetch_one(self, ctx: Ctx, row_id: int) -> Any:
        """One row by id through Core (the read path of GET), or a 404 problem."""
        (rows,) = await ctx.request.app[READER].rows(select(*self.columns_selected).where(self.pk == row_id))
        if not rows:
            raise NotFound(f"no {self.label} with id {row_id}")
        return rows[0]

    @cached_property
    def json_row(self) -> ColumnElement[Any] | None:
        """SQLite json_object() rendering a row exactly as the Read model would (None: not possible)."""
        if self.to_read is not None:
            return None
        return sqlite_json_projection(self.read, self.model, self.columns)

    @cached_property
    def table(self) -> str:
        """The table behind the resource (the key of its cached totals)."""
        return str(self.model.__tablename__)

    def fetch_one_json(self, ctx: Ctx, row_id: int) -> bytes | None:
        """One row rendered as JSON by SQLite (404 if absent), or None where that path does not apply.

        Synchronous: the inline SQLite read never waits, so the GET hot path needs no coroutine here.
        """
        reader = ctx.request.app[READER]
        if not reader.inline_sqlite or self.json_row is None:
            return None
        try:
            rows = reader.run_cached(self._get_key, self._get_statement, {"row_id": row_id})
        except sqlite3.OperationalError as err:
            if not _unrenderable_json(err):
                raise
            return None  # the row holds JSON SQLite cannot read (NaN): pydantic renders it
        if not rows:
            raise NotFound(f"no {self.label} with id {row_id}")
        return str(rows[0][0]).encode()

    @cached_property
    def _get_key(self) -> tuple[str, str]:
        """The GET statement's key in Reader.run_cached (built once, not per request)."""
        return ("get", self.name)

    def _get_statement(self) -> Any:
        """The GET statement with the id as a bind parameter (compiled once by Reader.run_cached)."""
        return select(self.json_row).where(  # type: ignore[arg-type]
            self.pk == bindparam("row_id", type_=self.pk.type))

    @cached_property
    def sort_columns(self) -> dict[str, InstrumentedAttribute[Any]]:
        """The column behind each accepted `sort` value."""
        return {f"{prefix}{name}": self.attr(name) for name in self.sort_fields for prefix in ("", "-")}

    @cached_property
    def sort_types(self) -> dict[str, type]:
        """The Python type of each accepted `sort` value's column (how its cursors are decoded)."""
        return {f"{prefix}{name}": _python_type(self.attr(name)) for name in self.sort_fields for prefix in ("", "-")}

    @cached_property
    def items_adapter(self) -> TypeAdapter[list[Any]]:
        """Validates and dumps a page of rows in one call."""
        return TypeAdapter(list[self.read])  # type: ignore[name-defined]

    @cached_property
    def page_model(self) -> type[BaseModel]:
        """The response model of the list: items, total, limit, next cursor."""
        return create_model(
            f"{self.read.__name__}Page",
            items=(list[self.read], ...),  # type: ignore[name-defined]
            total=(int, Field(description="rows matching the filters, over all pages")),
            limit=(int, ...),
            next_cursor=(str | None, Field(default=None, description="pass as ?cursor= for the next page")),
        )

    @cached_property
    def list_query(self) -> type[BaseModel]:
        """The list's query model: limit, cursor, sort, and this resource's filters."""
        sorts = tuple(name for field_name in self.sort_fields for name in (field_name, f"-{field_name}"))
        fields: dict[str, Any] = {
            "limit": (int, Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)),
            "cursor": (str | None, Field(default=None, max_length=512)),
            "sort": (Literal[sorts], Field(default="id")),  # type: ignore[valid-type]
        }
        for name, spec in self.filters.items():
            annotation = spec.type
            extra: dict[str, Any] = {"description": spec.description} if spec.description else {}
            if annotation is str:
                extra["max_length"] = 255
            elif annotation is datetime:  # naive times are ambiguous: require an offset
                annotation = AwareDatetime
            elif annotation is int:  # database integers are 64-bit; larger values would overflow the driver
                extra.update(ge=-(2**63), le=2**63 - 1)
            fields[name] = (annotation | None, Field(default=None, **extra))
        return create_model(
            f"{self.read.__name__}ListQuery", __config__=ConfigDict(extra="forbid"), **fields
        )

    def serialise(self, row: Any) -> BaseModel:
        """A row as its Read model."""
        if self.to_read is not None:
            return self.to_read(row)
        return self.read.model_validate(row, from_attributes=True)

    def filter_clauses(self, query: BaseModel) -> list[ColumnElement[bool]]:
        """WHERE clauses for the filters given in the query."""
        clauses: list[ColumnElement[bool]] = []
        for name, spec in self.filters.items():
            value = getattr(query, name)
            if value is None:
                continue
            column = self.attr(spec.column)
            if spec.op == "eq":
                clauses.append(column == value)
            elif spec.op == "ge":
                clauses.append(column >= value)
            elif spec.op == "le":
                clauses.append(column <= value)
            else:
                escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                clauses.append(column.like(f"%{escaped}%", escape="\\"))
        return clauses


def _python_type(attribute: InstrumentedAttribute[Any]) -> type:
    column_type = attribute.property.columns[0].type
    enum_class = getattr(column_type, "enum_class", None)
    if enum_class is not None:
        return str
    impl = getattr(column_type, "impl_instance", column_type)  # TypeDecorators report `object`
    try:
        python_type: type = impl.python_type
    except NotImplementedError:
        return str
    if issubclass(python_type, Enum):
        return str
    return python_type


def _filter_value(spec: Filter, value: Any) -> Any:
    if spec.op == "contains":
        escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%{escaped}%"
    return value


def _bound_filters(resource: Resource, names: Sequence[str]) -> list[ColumnElement[bool]]:
    """The filter clauses with named bind parameters (one compiled statement serves every value)."""
    clauses: list[ColumnElement[bool]] = []
    for name in names:
        spec = resource.filters[name]
        column = resource.attr(spec.column)
        if spec.op == "contains":
            clauses.append(column.like(bindparam(f"f_{name}", type_=String()), escape="\\"))
            continue
        parameter = bindparam(f"f_{name}", type_=column.type)
        clauses.append(column == parameter if spec.op == "eq" else column >= parameter if spec.op == "ge"
                       else column <= parameter)
    return clauses


_PAGING_FIELDS = frozenset({"limit", "cursor", "sort"})
_first = itemgetter(0)


def _json_page(resource: Resource, query: Any, reader: Any) -> tuple[list[Any], int]:
    """A page of (json, sort value, id) rows — (json, id) when sorted by id — and the total, on
    SQLite's raw connection.

    Statements are built with bind parameters and compiled once per shape (sort, filters used,
    cursor or not); the values of each request are bound at execution.
    """
    sort: str = query.sort
    descending = sort.startswith("-")
    column = resource.sort_columns[sort]
    pk = resource.pk
    if type(query) is resource.list_query and not query.model_fields_set - _PAGING_FIELDS:
        names: tuple[str, ...] = ()  # every filter holds its default, None: none given
    else:
        names = tuple(name for name in resource.filters if getattr(query, name) is not None)
    values: dict[str, Any] = {f"f_{name}": _filter_value(resource.filters[name], getattr(query, name))
                              for name in names}
    has_cursor = query.cursor is not None
    if has_cursor:
        value, row_id = decode_cursor(query.cursor, sort=sort, python_type=resource.sort_types[sort])
        if value is None and column is not pk:
            raise InvalidCursor("the cursor is not one this API issued")
        values.update(c_value=value if column is not pk else row_id, c_id=row_id)

    def build() -> Any:
        # Sorted by id, the id is the whole cursor: one column fewer to fetch per row.
        keys = (pk.label("_id"),) if column is pk else (column.label("_sort"), pk.label("_id"))
        statement = select(resource.json_row.label("_json"),  # type: ignore[union-attr]
                           *keys).where(*_bound_filters(resource, names))
        if has_cursor:
            row_param: Any = bindparam("c_id", type_=pk.type)
            statement = statement.where(after_cursor(
                column, pk, value=bindparam("c_value", type_=column.type), row_id=row_param, descending=descending))
        orders = [column.desc(), pk.desc()] if descending else [column.asc(), pk.asc()]
        return statement.order_by(*(orders[:1] if column is pk else orders)).limit(bindparam("page_limit"))

    rows = reader.run_cached(("list", resource.name, sort, names, has_cursor), build,
                             {**values, "page_limit": query.limit + 1})
    key = tuple((name, str(getattr(query, name))) for name in names) if names else ()
    total = reader.cached_total(resource.table, key)
    if total is None:
        (counted,) = reader.run_cached(
            ("count", resource.name, names),
            lambda: select(func.count()).select_from(resource.model).where(*_bound_filters(resource, names)),
            {name: value for name, value in values.items() if name.startswith("f_")})
        total = int(counted[0])
        reader.remember_total(resource.table, key, total)
    return rows, total


def _total_key(resource: Resource, query: BaseModel) -> tuple[Any, ...]:
    return tuple((name, str(getattr(query, name))) for name in resource.filters if getattr(query, name) is not None)


async def list_rows(ctx: Ctx, resource: Resource, *, extra_where: Sequence[ColumnElement[bool]] = ()) -> web.Response:
    """Run a paged, filtered, sorted list and answer with the page, a total and Link headers.

    Reads go through Core on one connection, not the ORM: lists are the hot path, and plain rows
    skip identity-map bookkeeping. On SQLite, rows of plain Read models come out of the database
    already as JSON (admin_api.projection). The total is counted once per filter set and kept
    briefly (Reader.cached_total); a client paging through a table does not recount per page.
    """
    query = ctx.query
    reader = ctx.request.app[READER]
    as_json = reader.inline_sqlite and resource.json_row is not None
    if as_json:
        try:
            if not extra_where:
                page, counted_total = _json_page(resource, query, reader)
                return _page_response(ctx, query, page, counted_total, resource.sort_types[query.sort])
            return await _list_page(ctx, resource, query, extra_where, as_json=True)
        except (sqlite3.OperationalError, DBAPIError) as err:
            if not _unrenderable_json(err):
                raise
        # A row on this page holds JSON SQLite cannot read (NaN, Infinity): pydantic renders it.
    return await _list_page(ctx, resource, query, extra_where, as_json=False)


def _unrenderable_json(err: BaseException) -> bool:
    """Whether a SQLite error means json() met a stored value it cannot parse.

    Python's json module (SQLAlchemy's JSON type) writes NaN and Infinity, which SQLite's json()
    refuses; the pydantic path reads them and writes null, so those rows take that path instead.
    """
    return "malformed JSON" in str(err)


async def _list_page(ctx: Ctx, resource: Resource, query: Any, extra_where: Sequence[ColumnElement[bool]], *,
                     as_json: bool) -> web.Response:
    """The list through SQLAlchemy Core: rows as SQLite JSON (`as_json`) or validated by pydantic."""
    reader = ctx.request.app[READER]
    sort: str = query.sort
    descending = sort.startswith("-")
    sort_name = sort.lstrip("-")
    column = resource.attr(sort_name)
    pk = resource.pk
    where = [*resource.filter_clauses(query), *extra_where]
    if as_json:
        statement = select(resource.json_row.label("_json"), column.label("_sort"), pk.label("_id"))  # type: ignore[union-attr]
    else:
        statement = select(*resource.columns_selected)
    statement = statement.where(*where)
    if query.cursor is not None:
        value, row_id = decode_cursor(query.cursor, sort=sort, python_type=_python_type(column))
        if value is None and column is not pk:
            raise InvalidCursor("the cursor is not one this API issued")
        statement = statement.where(after_cursor(column, pk, value=value, row_id=row_id, descending=descending))
    orders = [column.desc(), pk.desc()] if descending else [column.asc(), pk.asc()]
    if column is pk:
        orders = orders[:1]
    statement = statement.order_by(*orders).limit(query.limit + 1)
    total_key = _total_key(resource, query) if not extra_where else None
    total = reader.cached_total(resource.table, total_key) if total_key is not None else None
    if total is None:
        rows, counted = await reader.rows(statement, select(func.count()).select_from(resource.model).where(*where))
        total = int(counted[0][0])
        if total_key is not None:
            reader.remember_total(resource.table, total_key, total)
    else:
        (rows,) = await reader.rows(statement)
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        last = rows[-1]
        if as_json:
            next_cursor = encode_cursor(sort=sort, value=last[1], row_id=last[2])
        else:
            next_cursor = encode_cursor(sort=sort, value=getattr(last, column.key), row_id=last.id)
    if as_json:
        items = ("[" + ",".join([row[0] for row in rows]) + "]").encode()
    elif resource.to_read is None:
        # One call into pydantic-core for the whole page: rows validated and dumped in Rust.
        adapter = resource.items_adapter
        items = adapter.dump_json(adapter.validate_python(rows, from_attributes=True))
    else:
        items = b"[" + b",".join(resource.serialise(row).model_dump_json().encode() for row in rows) + b"]"
    cursor_json = "null" if next_cursor is None else f'"{next_cursor}"'
    tail = f',"total":{total},"limit":{query.limit},"next_cursor":{cursor_json}}}'.encode()
    return web.Response(
        body=b'{"items":' + items + tail,
        content_type="application/json",
        headers={"Link": link_header(ctx.request.rel_url, next_cursor=next_cursor), "X-Total-Count": str(total)},
    )


def _page_response(ctx: Ctx, query: Any, rows: list[Any], total: int, sort_type: type) -> web.Response:
    """The list answer for rows of (json, sort value, id), or (json, id) when sorted by id."""
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        last = rows[-1]
        value = last[1] if len(last) == 2 else _cursor_value(last[1], sort_type)
        next_cursor = encode_cursor(sort=query.sort, value=value, row_id=last[-1])
    cursor_json = "null" if next_cursor is None else f'"{next_cursor}"'
    body = f'{{"items":[{",".join(map(_first, rows))}],"total":{total},"limit":{query.limit},' \
           f'"next_cursor":{cursor_json}}}'
    return web.Response(
        body=body.encode(), content_type="application/json",
        headers={"Link": link_header(ctx.request.rel_url, next_cursor=next_cursor), "X-Total-Count": str(total)},
    )


def _cursor_value(raw: Any, sort_type: type) -> Any:
    """The sort value of a raw SQLite row as the typed path gives it (so cursors are identical)."""
    if raw is None:
        return None
    if sort_type is datetime and isinstance(raw, str):
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    if sort_type is bool:
        return bool(raw)
    if sort_type is Decimal:
        return Decimal(str(raw))
    return raw


async def get_row(session: AsyncSession, resource: Resource, row_id: int) -> Any:
    """The row with this id, or a 404 problem."""
    row = await session.get(resource.model, row_id)
    if row is None:
        raise NotFound(f"no {resource.label} with id {row_id}")
    return row


async def check_references(session: AsyncSession, resource: Resource, values: Mapping[str, Any]) -> None:
    """422 reference-not-found unless every foreign-key value names an existing row."""
    missing: list[dict[str, Any]] = []
    for name, value in values.items():
        if value is None or not hasattr(resource.model, name):
            continue
        prop = getattr(getattr(resource.model, name), "property", None)
        columns = getattr(prop, "columns", None)
        if not columns:
            continue
        for foreign_key in columns[0].foreign_keys:
            target = foreign_key.column
            found = (await session.execute(select(target).where(target == value).limit(1))).first()
            if found is None:
                missing.append({"field": name, "id": value, "resource": target.table.name})
    if missing:
        described = ", ".join(f"{m['field']}={m['id']}" for m in missing)
        raise ReferenceNotFound(f"referenced rows do not exist: {described}", extra={"missing": missing})


def _orm_values(resource: Resource, values: Mapping[str, Any]) -> dict[str, Any]:
    return {resource.columns.get(name, name): value for name, value in values.items()}


def _check_nulls(resource: Resource, values: Mapping[str, Any]) -> None:
    errors = []
    for name, value in values.items():
        if value is None:
            prop = getattr(getattr(resource.model, name, None), "property", None)
            columns = getattr(prop, "columns", None)
            if columns and not columns[0].nullable:
                errors.append({"loc": ["body", name], "msg": "may not be null", "type": "null_forbidden"})
    if errors:
        raise ValidationFailed("the body does not match the schema", extra={"errors": errors})


async def commit_or_conflict(session: AsyncSession, what: str) -> None:
    """Commit, turning a constraint violation into 409 (the DB text is not echoed)."""
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(
            f"the {what} conflicts with an existing row (a unique name, or rows that depend on it)"
        ) from None


def _location(ctx: Ctx, resource: Resource, row_id: int) -> str:
    return f"/{resource.name}/{row_id}"


def crud_routes(resource: Resource, routes: web.RouteTableDef | None = None) -> web.RouteTableDef:
    """Register the resource's list/get/create/update/delete routes and return the table."""
    routes = routes if routes is not None else web.RouteTableDef()
    base = f"/{resource.name}"
    label = resource.label

    @endpoint(routes, "GET", base, summary=f"List {resource.name}", tag=resource.tag,
              scope=resource.read_scope, query=resource.list_query, response=resource.page_model,
              problems=(InvalidCursor, ValidationFailed))
    async def list_handler(ctx: Ctx) -> web.Response:
        return await list_rows(ctx, resource)

    @endpoint(routes, "GET", base + "/{id}", summary=f"Get one {label}", tag=resource.tag,
              scope=resource.read_scope, response=resource.read, problems=(NotFound,))
    async def get_handler(ctx: Ctx) -> BaseModel | web.Response:
        rendered = resource.fetch_one_json(ctx, ctx.path_int())
        if rendered is not None:
            return web.Response(body=rendered, content_type="application/json")
        return resource.serialise(await resource.fetch_one(ctx, ctx.path_int()))

    if resource.create is not None:
        @endpoint(routes, "POST", base, summary=f"Create a {label}", tag=resource.tag,
                  scope=resource.write_scope, body=resource.create, response=resource.read, status=201,
                  problems=(ValidationFailed, ReferenceNotFound, Conflict))
        async def create_handler(ctx: Ctx) -> Reply:
            values = _orm_values(resource, ctx.body.model_dump())
            async with ctx.request.app[SESSIONS]() as session:
                await check_references(session, resource, values)
                if resource.prepare is not None:
                    values = await resource.prepare(ctx, session, values, None)
                row = resource.model(**values)
                session.add(row)
                await commit_or_conflict(session, label)
                ctx.request.app[READER].invalidate(resource.table)
                await session.refresh(row)
                if resource.after_create is not None:
                    await resource.after_create(ctx, row)
                return Reply(resource.serialise(row), status=201,
                             headers={"Location": _location(ctx, resource, getattr(row, "id"))})  # noqa: B009

    if resource.update is not None:
        @endpoint(routes, "PATCH", base + "/{id}", summary=f"Change a {label}", tag=resource.tag,
                  scope=resource.write_scope, body=resource.update, response=resource.read,
                  problems=(NotFound, ValidationFailed, ReferenceNotFound, Conflict))
        async def update_handler(ctx: Ctx) -> BaseModel:
            values = _orm_values(resource, ctx.body.model_dump(exclude_unset=True))
            _check_nulls(resource, values)
            async with ctx.request.app[SESSIONS]() as session:
                row = await get_row(session, resource, ctx.path_int())
                await check_references(session, resource, values)
                if resource.prepare is not None:
                    values = await resource.prepare(ctx, session, values, row)
                for name, value in values.items():
                    setattr(row, name, value)
                await commit_or_conflict(session, label)
                ctx.request.app[READER].invalidate(resource.table)
                await session.refresh(row)
                return resource.serialise(row)

    if resource.deletable:
        @endpoint(routes, "DELETE", base + "/{id}", summary=f"Delete a {label}", tag=resource.tag,
                  scope=resource.write_scope, problems=(NotFound, Conflict))
        async def delete_handler(ctx: Ctx) -> None:
            async with ctx.request.app[SESSIONS]() as session:
                row = await get_row(session, resource, ctx.path_int())
                await session.delete(row)
                await commit_or_conflict(session, label)
                ctx.request.app[READER].invalidate(resource.table)

    return routes


__all__ = [
    "ApiModel", "Filter", "ReadModel", "Resource", "check_references", "commit_or_conflict", "crud_routes",
    "get_row", "list_rows",
]
