"""Field paths: how `meta.spans`, `meta.confidence` and the HTML view name a value of a record.

A path joins object keys with dots and list positions in brackets, from the record's root:
`name`, `line_items[0].description`, `skills[2]`. `dollar_path` is the same path in the
`$.a[0].b` form of validation messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

Part = str | int


def field_path(parts: Sequence[Part]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def dollar_path(parts: Sequence[Part]) -> str:
    path = field_path(parts)
    return "$" if not path else f"${path}" if path.startswith("[") else f"$.{path}"


_INDEX = re.compile(r"\[\d+\]")


def field_key(path: str) -> str:
    """The path with its list positions dropped (`items[3].price` -> `items[].price`): the same
    field of every item of a list shares one key (and one colour in the view)."""
    return _INDEX.sub("[]", path)


def leaves(data: Any, parts: tuple[Part, ...] = ()) -> Iterator[tuple[tuple[Part, ...], Any]]:
    """Every scalar (string, number, boolean, null) of a JSON value, with its path parts, in order."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, (*parts, str(key)))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            yield from leaves(value, (*parts, i))
    else:
        yield parts, data
