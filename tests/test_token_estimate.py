"""The token budget estimated from a schema (`estimate_max_tokens`): each shared definition costed
once, a sum stopped at the ceiling, so a schema whose definitions refer to each other many times
(Ansible's: 48 s walked along every path) is estimated at once, with the same budget."""

from __future__ import annotations

from typing import Any

from extractor.contracts.compile import estimate_max_tokens


def _chain(levels: int) -> dict[str, Any]:
    """Each definition refers to the next one twice: 2**levels paths from the root."""
    defs: dict[str, Any] = {f"d{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"},
                                                                          "b": {"$ref": f"#/$defs/d{i + 1}"}}}
                            for i in range(levels)}
    defs[f"d{levels}"] = {"type": "integer"}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/d0"}}, "$defs": defs}


def test_a_definition_shared_along_many_paths_is_costed_once_and_capped() -> None:
    assert estimate_max_tokens(_chain(60)) == 2048  # 2**60 paths: only finishes when each is costed once
    assert estimate_max_tokens(_chain(60), ceiling=4096) == 4096


def test_small_schemas_keep_their_estimate() -> None:
    assert estimate_max_tokens(_chain(3)) == 2 * (2 + 4 + 118)  # d3 6, d2 22, d1 54, d0 118
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    assert estimate_max_tokens(person) == 2 * (2 + (4 + 34) + (4 + 6))  # a free string 34, an integer 6
    assert estimate_max_tokens({"type": "integer"}) == 64  # the floor
    recursive = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                 "$defs": {"n": {"type": "object", "properties": {"kids": {"type": "array",
                                                                            "items": {"$ref": "#/$defs/n"}}}}}}
    assert estimate_max_tokens(recursive) == 2 * (2 + 4 + 2 + 6 * (2 + 4 + 2 + 6 * 8))
