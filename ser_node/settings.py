"""Reading settings dataclasses from YAML/JSON mappings, refusing names that do not exist (typos must not pass)."""
from __future__ import annotations

import dataclasses
from typing import Any


def check_known_fields(cls: type, values: dict[str, Any], what: str) -> None:
    """Raises ValueError naming every key of `values` that is not a field of the dataclass `cls`."""
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")
