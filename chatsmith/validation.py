"""The one check for records read from files or flags: every field has its type and bounds.

Run folders are user files: a hand-edited or damaged JSON value must give one clear line
naming the field, never a traceback deep in model code or a 400 GB allocation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from chatsmith.errors import ChatsmithError

_KIND_NAMES = {int: "an integer", float: "a number", str: "text", bool: "true or false"}
_KIND_NAMES.update({dict: "a JSON object", list: "a JSON list"})


@dataclass(frozen=True)
class Field:
    kind: type  # int, float, str, bool, dict or list
    lo: float | None = None
    hi: float | None = None
    optional: bool = False  # may be missing or null


def _has_kind(value: Any, kind: type) -> bool:
    if kind is int:  # JSON true/false and 2.0 are not integers
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_record(record: Any, spec: dict[str, Field], where: str) -> dict:
    """Return `record` if it is a dict whose fields in `spec` have their kind and bounds;
    otherwise raise ChatsmithError naming `where` and the first bad field."""
    if not isinstance(record, dict):
        raise ChatsmithError(f"{where} must be a JSON object, got {_show(record)}")
    for name, f in spec.items():
        if name not in record:
            if f.optional:
                continue
            raise ChatsmithError(f"{where}: '{name}' is missing")
        value = record[name]
        if value is None and f.optional:
            continue
        if not _has_kind(value, f.kind):
            raise ChatsmithError(
                f"{where}: '{name}' must be {_KIND_NAMES[f.kind]}, got {_show(value)}"
            )
        if f.kind is float and not math.isfinite(value):
            raise ChatsmithError(f"{where}: '{name}' must be finite, got {value}")
        if (f.lo is not None and value < f.lo) or (f.hi is not None and value > f.hi):
            raise ChatsmithError(f"{where}: '{name}' must be {_range(f)}, got {value:,}")
    return record


def _range(f: Field) -> str:
    if f.lo is not None and f.hi is not None:
        return f"between {f.lo:,} and {f.hi:,}"
    return f"at least {f.lo:,}" if f.lo is not None else f"at most {f.hi:,}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
