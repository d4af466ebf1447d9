"""The head-end's routes: each names its handler, role and the pydantic models of its query, body and
answer (server.headend.models). The router checks requests and answers against them, and the OpenAPI
document (``/api/openapi.json``, browsable at ``/api/docs``) is generated from the same routes and models.

A handler receives the request and, when its route declares them, the parsed query and body; it returns
the answer's data (checked against the answer model), ``(data, status)``, or a ready response (CSV).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema

from sep2.validation import first_error
from server.headend.errors import HeadEndError
from server.headend.models import ErrorAnswer
from server.limits import InputError, load_json
from server.store import to_jsonable

MAX_JSON_BYTES = 16 * 1024 * 1024  # JSON bodies; DOE uploads are streamed and bounded by their handler
QUERY_MESSAGES = {
    "int_parsing": "expected an integer, got {input!r}",
    "float_parsing": "expected a number, got {input!r}",
    "bool_parsing": "expected true or false, got {input!r}",
}
UPLOAD_CONTENT = {  # what a raw upload route (DOE files) accepts
    "text/csv": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
    "application/x-ndjson": {"schema": {"type": "string"}},
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str
    write: bool
    summary: str
    answer: type[BaseModel] | Any  # a model, or a union of models
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    csv: bool = False  # ?format=csv answers text/csv
    upload: bool = False  # the body is a file (CSV, JSON or NDJSON), streamed by the handler
    also: tuple[tuple[int, str], ...] = ()  # other statuses it answers, each with its meaning

    @property
    def successes(self) -> set[int]:
        """The 2xx statuses the route is documented to answer: its handler may answer no other."""
        return {self.status, *(code for code, _meaning in self.also if 200 <= code < 300)}


def _error(exc: ValidationError, messages: dict[str, str] | None = None) -> HeadEndError:
    where, message = first_error(exc, messages)
    return HeadEndError(400, f"{where}: {message}" if where else message, where or None)


def parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    values = {k: v for k, v in request.query.items() if v != ""}  # an empty parameter is an absent one
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _error(exc, QUERY_MESSAGES) from None


async def parse_body(model: type[BaseModel], request: web.Request) -> BaseModel:
    data: Any = {}
    if request.can_read_body:
        try:
            data = load_json(await request.read(), max_bytes=MAX_JSON_BYTES)
        except InputError as exc:
            raise HeadEndError(400, exc.detail, exc.field) from None
    if not isinstance(data, dict):
        raise HeadEndError(400, "body: expected a JSON object", "body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _error(exc) from None


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(value)
    return value


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(jsonable(data), status=status, dumps=lambda v: json.dumps(v, default=str))


Handler = Callable[..., Awaitable[Any]]


async def call(route: Route, handler: Handler, request: web.Request) -> tuple[Any, int]:
    """Parse ``request`` for ``route``, run ``handler``: (answer data checked against its model, status),
    or (a ready response, its status)."""
    args: list[Any] = []
    if route.query is not None:
        args.append(parse_query(route.query, request))
    if route.body is not None:
        args.append(await parse_body(route.body, request))
    result = await handler(request, *args)
    if isinstance(result, web.StreamResponse):
        data, status = result, result.status
    else:
        data, status = result if isinstance(result, tuple) else (result, route.status)
    # An answer its OpenAPI entry does not describe (status or schema) is a bug: 500, logged.
    if status not in route.successes:
        raise RuntimeError(f"{route.handler} answered {status}, documented {sorted(route.successes)}")
    if not isinstance(data, web.StreamResponse):
        data = jsonable(data)
        _checker(route).validate_python(data)
    return data, status


_CHECKERS: dict[Any, TypeAdapter[Any]] = {}


def _checker(route: Route) -> TypeAdapter[Any]:
    if route.answer not in _CHECKERS:
        _CHECKERS[route.answer] = TypeAdapter(route.answer)
    return _CHECKERS[route.answer]


def bind(route: Route, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for ``route``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        data, status = await call(route, handler, request)
        return data if isinstance(data, web.StreamResponse) else ok(data, status)

    return handle


def add_routes(app: web.Application, routes: list[Route], handlers: dict[str, Handler]) -> None:
    """Bind every route to the handler it names."""
    for route in routes:
        app.router.add_route(route.method, route.path, bind(route, handlers[route.handler]))


# ------------------------------------------------------------------------------------------ OpenAPI


def _models(routes: list[Route]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorAnswer": ErrorAnswer}
    for route in routes:
        answers = getattr(route.answer, "__args__", None) or (route.answer,)
        for model in (route.body, *answers):
            if model is not None:
                found.setdefault(model.__name__, model)
    return list(found.values())


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    """OpenAPI 3.1 for ``routes``: parameters, bodies and answers from their models, with roles."""
    refs, definitions = models_json_schema(
        [(m, "validation") for m in _models(routes)], ref_template="#/components/schemas/{model}"
    )
    ref = {model: schema for (model, _mode), schema in refs.items()}
    paths: dict[str, Any] = {}
    for route in routes:
        parameters = [
            {"name": p[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for p in route.path.split("/")
            if p.startswith("{")
        ]
        if route.query is not None:
            schema = route.query.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
            required = set(schema.get("required", ()))
            for name, prop in schema["properties"].items():
                param = {"name": name, "in": "query", "required": name in required, "schema": prop}
                if "description" in prop:
                    param["description"] = prop["description"]
                parameters.append(param)
        answers = getattr(route.answer, "__args__", None) or (route.answer,)
        answer_schema = ref[answers[0]] if len(answers) == 1 else {"oneOf": [ref[m] for m in answers]}
        content: dict[str, Any] = {"application/json": {"schema": answer_schema}}
        if route.csv:
            content["text/csv"] = {"schema": {"type": "string"}}
        error = {"application/json": {"schema": ref[ErrorAnswer]}}
        responses = {
            str(route.status): "OK",
            "400": "invalid request; the error names the field",
            "401": "missing or unknown bearer token",
            **({"403": "the token's role may not write"} if route.write else {}),
            "404": "not found",
            **({"413": "body larger than the head-end accepts (64 MiB)"} if route.body is not None else {}),
            **{str(code): meaning for code, meaning in route.also},
            "500": "internal error (logged)",
        }
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler,
            "security": [{"bearer": []}],
            "x-derlink-role": "operator" if route.write else "viewer",
            "parameters": parameters,
            "responses": {
                code: {"description": meaning, "content": content if code.startswith("2") else error}
                for code, meaning in sorted(responses.items())
            },
        }
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[route.body]}},
            }
        elif route.upload:
            op["requestBody"] = {"required": True, "content": UPLOAD_CONTENT}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "derlink head-end API",
            "version": "1",
            "description": "The operator API of the derlink 2030.5 server (bearer tokens; JSON errors name "
            "the field). Browsable at /api/docs.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": definitions.get("$defs", {}),
        },
        "paths": paths,
    }


# ------------------------------------------------------------------------------------------ the page


def _type(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    """A short type for the page: ``integer``, ``string | null``, ``array of Control``."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(_type(s, schemas) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), schemas)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'], schemas)}"
    return str(kind)


def _bounds(schema: dict[str, Any]) -> str:
    words = {
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "exclusiveMaximum": "<",
        "minLength": "length >=",
        "maxLength": "length <=",
        "pattern": "matches",
        "minItems": "items >=",
    }
    parts = [f"{words[k]} {schema[k]}" for k in words if k in schema]
    for option in schema.get("anyOf", ()):
        parts += [f"{words[k]} {option[k]}" for k in words if k in option]
    if schema.get("default") is not None:
        parts.append(f"default {json.dumps(schema['default'])}")
    return ", ".join(parts)


def _fields(name: str, schemas: dict[str, Any]) -> list[dict[str, str]]:
    schema = schemas.get(name, {})
    required = set(schema.get("required", ()))
    return [
        {"name": field, "type": _type(prop, schemas), "required": "yes" if field in required else "",
         "rules": _bounds(prop), "description": prop.get("description", "")}
        for field, prop in schema.get("properties", {}).items()
    ]  # fmt: skip


def docs_page(document: dict[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page (no script, no CDN)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    schemas = document["components"]["schemas"]
    operations = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            successes = [s for s in op["responses"] if s.startswith("2")]
            ok_status = successes[0]
            answer = op["responses"][ok_status]["content"]["application/json"]["schema"]
            body = op.get("requestBody", {}).get("content", {})
            json_body = body.get("application/json", {}).get("schema")
            operations.append(
                {
                    "id": op["operationId"], "method": method.upper(), "path": path, "summary": op["summary"],
                    "role": op["x-derlink-role"], "parameters": op["parameters"],
                    "body": _type(json_body, schemas) if json_body else None,
                    "body_types": sorted(body), "status": " or ".join(successes),
                    "answer": _type(answer, schemas),
                    "csv": "text/csv" in op["responses"][ok_status]["content"],
                }
            )  # fmt: skip
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
    )
    return env.get_template("api.html").render(
        info=document["info"], operations=operations, type=_type, bounds=_bounds,
        schemas={name: _fields(name, schemas) for name in sorted(schemas)},
    )  # fmt: skip
