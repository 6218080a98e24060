"""Declaring an endpoint once: path, scope and pydantic models drive validation, auth and OpenAPI.

`endpoint(...)` wraps a handler taking a `Ctx` (validated body and query, principal) and returning a
pydantic model, a `Reply`, a raw aiohttp response, or None (204). The same `Operation` record the
wrapper validates with is what `admin_api.openapi` turns into the document, so the two cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from admin_api.auth import Principal
from admin_api.problems import (
    ApiProblem,
    MalformedRequest,
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from admin_api.state import PRINCIPAL

OPERATION_ATTR = "__api_operation__"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_MAX_ID = 2**63 - 1
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Operation:
    """Everything the API knows about one route; the OpenAPI operation is generated from it."""

    method: str
    path: str
    summary: str
    tag: str
    scope: str | None  # None: no token needed (health, OAuth callback)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    problems: tuple[type[ApiProblem], ...] = ()
    description: str = ""
    websocket: bool = False
    raw_response: str | None = None  # content type of a non-JSON answer (HTML, text, redirect)
    path_params: Mapping[str, type] = field(default_factory=dict)


@dataclass
class Reply:
    """A JSON answer with a non-default status or extra headers."""

    model: BaseModel | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Ctx:
    """What a handler receives: the request, its caller, and the validated inputs."""

    request: web.Request
    principal: Principal | None
    body: Any = None
    query: Any = None

    def path_int(self, name: str = "id") -> int:
        """An integer path parameter (the route pattern already allows digits only)."""
        value = int(self.request.match_info[name])
        if value > _MAX_ID:
            raise NotFound(f"no {name} {value}")
        return value

    def body_as(self, model: type[ModelT]) -> ModelT:
        """The validated body, typed."""
        assert isinstance(self.body, model)
        return self.body

    def query_as(self, model: type[ModelT]) -> ModelT:
        """The validated query, typed."""
        assert isinstance(self.query, model)
        return self.query

    @property
    def user_id(self) -> int:
        """The calling token's owner (authenticated routes only)."""
        assert self.principal is not None
        return self.principal.user_id


Result = BaseModel | Reply | web.StreamResponse | None
HandlerFn = Callable[[Ctx], Awaitable[Result]]


def validation_problem(err: ValidationError, *, where: str) -> ValidationFailed:
    """A 422 listing each failed field, never echoing the submitted values (they may be secret)."""
    errors = [
        {"loc": [where, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in err.errors(include_url=False, include_input=False, include_context=False)
    ]
    return ValidationFailed(f"the {where} does not match the schema", extra={"errors": errors})


async def read_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """The JSON body validated against `model` (415, 400, 413 or 422 problems otherwise)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as err:
        if any(error["type"] == "json_invalid" for error in err.errors()):
            raise MalformedRequest("the body is not valid JSON") from None
        raise validation_problem(err, where="body") from None


def read_query(request: web.Request, model: type[ModelT]) -> ModelT:
    """The query string validated against `model`; a repeated parameter is refused."""
    query = request.query
    if len(query) != len(set(query.keys())):
        raise MalformedRequest("a query parameter is repeated")
    try:
        # What model_validate calls, minus its Python frame (every list request comes through here).
        validated: ModelT = model.__pydantic_validator__.validate_python(dict(query))
        return validated
    except ValidationError as err:
        raise validation_problem(err, where="query") from None


def _aiohttp_path(path: str, params: Mapping[str, type]) -> str:
    def pattern(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{{{name}:\\d{{1,19}}}}" if params.get(name) is int else f"{{{name}:[^{{}}/]+}}"

    return _PATH_PARAM.sub(pattern, path)


def render(result: Result, *, status: int) -> web.StreamResponse:
    """Turn a handler's result into a response."""
    # A plain Response (lists, GETs) is told apart by its exact class first: isinstance against
    # StreamResponse goes through ABCMeta (it is a MutableMapping).
    if type(result) is web.Response or isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=204)
    if isinstance(result, Reply):
        if result.model is None:
            return web.Response(status=result.status, headers=result.headers)
        return web.Response(
            status=result.status,
            body=result.model.model_dump_json().encode(),
            content_type="application/json",
            headers=result.headers,
        )
    return web.Response(status=status, body=result.model_dump_json().encode(), content_type="application/json")


def endpoint(
    routes: web.RouteTableDef,
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    scope: str | None,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    problems: tuple[type[ApiProblem], ...] = (),
    description: str = "",
    websocket: bool = False,
    raw_response: str | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    """Register `handler` on `routes` with validation of body and query, and its OpenAPI record."""
    names = _PATH_PARAM.findall(path)
    params = {name: (int if name == "id" or name.endswith("_id") else str) for name in names}
    operation = Operation(
        method=method.upper(), path=path, summary=summary, tag=tag, scope=scope, body=body,
        query=query, response=response, status=status, problems=problems,
        description=description, websocket=websocket, raw_response=raw_response, path_params=params,
    )

    def decorate(handler_fn: HandlerFn) -> HandlerFn:
        async def handler(request: web.Request) -> web.StreamResponse:
            ctx = Ctx(request, request.get(PRINCIPAL), None, None if query is None else read_query(request, query))
            if body is not None:
                ctx.body = await read_body(request, body)
            return render(await handler_fn(ctx), status=status)

        handler.__doc__ = handler_fn.__doc__
        handler.__name__ = handler_fn.__name__
        setattr(handler, OPERATION_ATTR, operation)
        routes.route(operation.method, _aiohttp_path(path, params))(handler)
        return handler_fn

    return decorate


def operation_of(handler: Any) -> Operation | None:
    """The Operation a registered handler was declared with, if any."""
    return getattr(handler, OPERATION_ATTR, None)
