"""Config errors a person can act on: each names the key, the value given, the override that gave it, and for
an unknown key the known key it was probably meant to be."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from tasks.redaction import redact

MAX_VALUE_CHARS = 60


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The field names of the config section at `path` ([] where the path leaves the models)."""
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _given(error: dict[str, Any]) -> str:
    value = error.get("input")
    if error["type"] == "extra_forbidden" or isinstance(value, dict) or value is None and error["type"] == "missing":
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + '...'})"


def _meant(model: type[BaseModel], loc: tuple, error: dict[str, Any]) -> str:
    if error["type"] != "extra_forbidden":
        return ""
    close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc[:-1]), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join(map(str, (*loc[:-1], close[0])))}?" if close else ""


def _origin(key: str, overrides: list[str]) -> str:
    """The --set override that wrote this key (or a key inside it), if one did."""
    for text in reversed(overrides):
        target = text.split("=", 1)[0].strip()
        if target == key or target.startswith(f"{key}.") or key.startswith(f"{target}."):
            return f" [from --set {text}]"
    return ""


def format_errors(model: type[BaseModel], source: str, err: ValidationError, overrides: list[str]) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}{_given(e)}{_meant(model, e['loc'], e)}{_origin(key, overrides)}")
    return redact("\n".join(lines))
