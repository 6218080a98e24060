"""The OpenAPI 3.1 document, generated from the registered routes' `Operation` records.

Nothing here is written by hand per route: paths come from the router, parameters and bodies from
the pydantic models (their JSON Schema is 2020-12, which OpenAPI 3.1 uses as is), errors from the
problem classes each operation declares.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from admin_api import __version__
from admin_api.endpoint import Operation, operation_of
from admin_api.problems import (
    PROBLEM_CONTENT_TYPE,
    TYPE_BASE,
    ApiProblem,
    InsufficientScope,
    InternalError,
    RateLimited,
    Unauthenticated,
)

_REF = "#/components/schemas/{model}"
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def operations(app: web.Application) -> list[Operation]:
    """Every declared operation of the app, in registration order."""
    found: list[Operation] = []
    for route in app.router.routes():
        operation = operation_of(route.handler)
        if operation is not None and operation not in found:
            found.append(operation)
    return found


def _parameters(operation: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1} if kind is int else {"type": "string"}}
        for name, kind in operation.path_params.items()
    ]
    if operation.query is not None:
        schema = operation.query.model_json_schema(ref_template=_REF)
        for name, definition in schema.get("$defs", {}).items():
            schemas.setdefault(name, definition)
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return parameters


def _problem_responses(operation: Operation) -> dict[str, Any]:
    problems: list[type[ApiProblem]] = list(operation.problems)
    if operation.scope is not None:
        problems += [Unauthenticated, InsufficientScope, RateLimited]
    problems.append(InternalError)
    responses: dict[str, Any] = {}
    for problem in problems:
        entry = responses.setdefault(str(problem.status), {"description": "", "types": []})
        entry["types"].append(TYPE_BASE + problem.slug)
    return {
        status: {
            "description": "Problem: " + ", ".join(entry["types"]),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, entry in responses.items()
    }


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`."""
    declared = operations(app)
    models: list[tuple[type[BaseModel], Any]] = []
    for operation in declared:
        if operation.body is not None:
            models.append((operation.body, "validation"))
        if operation.response is not None:
            models.append((operation.response, "serialization"))
    unique = list(dict.fromkeys(models))
    refs, top = models_json_schema(unique, ref_template=_REF) if unique else ({}, {})
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Problem"] = _PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    for operation in declared:
        if operation.tag not in tags:
            tags.append(operation.tag)
        entry: dict[str, Any] = {
            "operationId": f"{operation.method.lower()}_{operation.path.strip('/').replace('/', '_')}"
            .replace("{", "").replace("}", ""),
            "summary": operation.summary,
            "tags": [operation.tag],
            "parameters": _parameters(operation, schemas),
            "responses": _problem_responses(operation),
        }
        if operation.description:
            entry["description"] = operation.description
        if operation.scope is None:
            entry["security"] = []
        else:
            entry["security"] = [{"bearer": [operation.scope]}]
            entry["x-required-scope"] = operation.scope
        if operation.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
            }
        if operation.websocket:
            entry["responses"]["101"] = {"description": "Switching to the WebSocket protocol (JSON text frames)"}
        elif operation.raw_response is not None:
            entry["responses"][str(operation.status)] = {
                "description": "Success",
                "content": {operation.raw_response: {"schema": {"type": "string"}}},
            }
        elif operation.response is not None:
            entry["responses"][str(operation.status)] = {
                "description": "Success",
                "content": {"application/json": {"schema": refs[(operation.response, "serialization")]}},
            }
        else:
            entry["responses"][str(operation.status)] = {"description": "Success, no content"}
        paths.setdefault(operation.path, {})[operation.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Orchestrator admin API",
            "version": __version__,
            "description": "Administer the orchestrator daemon. Every list is keyset-paginated "
            "(limit, cursor, sort; total and Link headers); every error is application/problem+json.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "orch_… token; scopes read < write < admin"}
            },
        },
        "security": [{"bearer": []}],
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Orchestrator admin API</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}code,pre{background:#f4f4f4}
.op{border-top:1px solid #ddd;padding:.4em 0}.m{display:inline-block;width:5em;font-weight:bold}
pre{padding:.5em;overflow:auto;max-height:20em}</style></head>
<body><h1>Orchestrator admin API</h1>
<p>This page holds no data. Paste an API token (<code>orchestrator tokens create</code>); it is kept in this
tab only and sent as <code>Authorization: Bearer</code> to fetch <code>/openapi.json</code>.</p>
<form id="f"><input id="t" type="password" size="60" placeholder="orch_…" autocomplete="off">
<button>Load</button></form><p id="s"></p><div id="ops"></div>
<script>
const el=(t,x)=>{const e=document.createElement(t);e.textContent=x||"";return e};
async function load(tok){
  const r=await fetch("openapi.json",{headers:{Authorization:"Bearer "+tok}});
  if(!r.ok){document.getElementById("s").textContent="HTTP "+r.status;return}
  const doc=await r.json(),ops=document.getElementById("ops");ops.replaceChildren();
  for(const [path,item] of Object.entries(doc.paths)){for(const [m,op] of Object.entries(item)){
    const d=el("details");d.className="op";const s=el("summary");s.append(el("span",m.toUpperCase()));
    s.firstChild.className="m";s.append(el("code",path)," "+op.summary+" ["+(op["x-required-scope"]||"public")+"]");
    d.append(s,el("pre",JSON.stringify(op,null,2)));ops.append(d)}}
  document.getElementById("s").textContent=doc.info.title+" "+doc.info.version;
}
document.getElementById("f").onsubmit=e=>{e.preventDefault();const v=document.getElementById("t").value;
  sessionStorage.setItem("tok",v);load(v)};
if(sessionStorage.getItem("tok"))load(sessionStorage.getItem("tok"));
</script></body></html>
"""
