"""Pydantic config base classes and ``key=value`` override parsing.

Every component has a nested ``Config`` (``extra="forbid"``): one place for validation, CLI help and the
JSON schema that ``cli.py show`` prints.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from invertkit.core.errors import ConfigError


class ComponentConfig(BaseModel):
    """Base of every plugin's ``Config``: unknown keys are errors, values are validated on assignment, and a
    float must be finite (``Infinity``/``NaN`` are refused, the field named)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


T = TypeVar("T", bound=BaseModel)


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], anything else stays a string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"option '{pair}' is not of the form key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def build_config(cls: type[T], values: dict[str, Any] | BaseModel | None, *, what: str) -> T:
    """Validate ``values`` into ``cls``; a failure becomes one :class:`ConfigError` line naming the field."""
    if isinstance(values, cls):
        return values
    if isinstance(values, BaseModel):
        values = values.model_dump()
    try:
        return cls.model_validate(values or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        given = err.get("input")
        if err.get("type") == "extra_forbidden":
            allowed = ", ".join(sorted(cls.model_fields)) or "none"
            raise ConfigError(f"invalid option for {what}: unknown field '{field}' (known: {allowed})") from None
        raise ConfigError(f"invalid value for {what} field '{field}': {err.get('msg')} (got {given!r})") from None
