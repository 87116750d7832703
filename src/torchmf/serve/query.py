"""Query-string parameters of the hot ``GET`` routes, parsed by one small validated parser.

FastAPI resolves declared parameters through its dependency machinery on every
request (about 40 % of a ``GET /v1/recommend`` request's CPU time). The hot
routes take the ``Request`` instead and call :meth:`Params.parse`, which
validates each value with a pydantic ``TypeAdapter`` (the same rules and
messages as FastAPI's declared parameters) and raises FastAPI's
``RequestValidationError`` so the app's 422 handler names the field as before.
:meth:`Params.openapi` documents them (the route's ``openapi_extra``) with the
OpenAPI entries FastAPI generated for the declared parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

__all__ = ["Param", "Params", "parameters_before_responses"]

_REQUIRED = object()
_SCHEMA = {"int": {"type": "integer"}, "bool": {"type": "boolean"}, "str": {"type": "string"}}


@dataclass(frozen=True)
class Param:
    """One parameter.

    Attributes
    ----------
    name : str
    kind : {"int", "bool", "str", "strs"}
        ``"strs"``: a repeatable query parameter (a list of strings, or None
        when absent).
    default : object
        Value when absent; leave unset for a required parameter.
    where : {"query", "path"}
    description : str, optional
    ge, le : int, optional
        Bounds of an ``"int"``.
    max_items : int, optional
        Most values of a ``"strs"``.
    """

    name: str
    kind: str
    default: Any = _REQUIRED
    where: str = "query"
    description: str | None = None
    ge: int | None = None
    le: int | None = None
    max_items: int | None = None
    adapter: TypeAdapter | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("int", "bool", "str", "strs") or self.where not in ("query", "path"):
            raise ValueError(f"bad parameter spec {self!r}")
        kind: Any = {"int": Annotated[int, Field(ge=self.ge, le=self.le)], "bool": bool, "str": None,
                     "strs": Annotated[list[str], Field(max_length=self.max_items)]}[self.kind]
        object.__setattr__(self, "adapter", None if kind is None else TypeAdapter(kind))

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI parameter object, as FastAPI writes it for a declared ``Query``/``Path``."""
        if self.kind == "strs":
            array: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
            if self.max_items is not None:
                array["maxItems"] = self.max_items
            schema: dict[str, Any] = {"anyOf": [array, {"type": "null"}]}
        else:
            schema = dict(_SCHEMA[self.kind])
            if self.le is not None:
                schema["maximum"] = self.le
            if self.ge is not None:
                schema["minimum"] = self.ge
        if self.description is not None:
            schema["description"] = self.description
        if not self.required and self.default is not None:
            schema["default"] = self.default
        schema["title"] = self.name.replace("_", " ").title()
        out = {"name": self.name, "in": self.where, "required": self.where == "path" or self.required,
               "schema": schema}
        if self.description is not None:
            out["description"] = self.description
        return out


class Params:
    """The parameters of one route: ``parse(request)`` gives ``{name: value}`` or raises a 422.

    Query strings are split like Starlette splits them; a repeated scalar
    parameter takes its last value, unknown names are ignored, an empty
    repeatable parameter is absent (all as FastAPI does).
    """

    def __init__(self, *params: Param) -> None:
        self.params = params
        self.query = tuple(p for p in params if p.where == "query")
        self.path = tuple(p for p in params if p.where == "path")

    def openapi(self) -> dict[str, Any]:
        """``openapi_extra`` for the route."""
        return {"parameters": [p.openapi() for p in self.params]}

    def parse(self, scope: dict[str, Any]) -> dict[str, Any]:
        """Validated values from an ASGI ``scope`` (``request.scope``).

        Raises
        ------
        fastapi.exceptions.RequestValidationError
            A value is invalid or a required one is missing (every problem, like FastAPI).
        """
        out: dict[str, Any] = {p.name: scope["path_params"][p.name] for p in self.path}
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given: dict[str, Any] = {}
        for key, value in pairs:
            given.setdefault(key, []).append(value)
        errors: list[dict[str, Any]] = []
        for p in self.query:
            values = given.get(p.name)
            if not values:
                if p.required:
                    errors.append({"type": "missing", "loc": ("query", p.name), "msg": "Field required",
                                   "input": None})
                else:
                    out[p.name] = p.default
                continue
            value = values if p.kind == "strs" else values[-1]
            if p.adapter is None:
                out[p.name] = value
                continue
            try:
                out[p.name] = p.adapter.validate_python(value)
            except ValidationError as exc:
                for e in exc.errors(include_url=False):
                    errors.append({**e, "loc": ("query", p.name, *e["loc"])})
        if errors:
            raise RequestValidationError(errors)
        return out


# the keys of an operation in the order FastAPI writes them (openapi_extra's go last)
_OPERATION_KEYS = ("tags", "summary", "description", "operationId", "deprecated", "security", "parameters",
                   "requestBody", "callbacks", "responses")


def parameters_before_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """Put each operation's keys back in FastAPI's order, in place.

    ``openapi_extra`` (the direct routes' ``parameters`` and, with an API key,
    ``security``) is merged at the end of the operation; the document means
    the same either way, but this keeps the schema byte-for-byte what it was
    when the parameters and the key were declared the FastAPI way.
    """
    rank = {k: j for j, k in enumerate(_OPERATION_KEYS)}
    for item in schema.get("paths", {}).values():
        for method, op in item.items():
            if isinstance(op, dict) and "parameters" in op:
                item[method] = {k: op[k] for k in sorted(op, key=lambda k: rank.get(k, len(rank)))}
    return schema
