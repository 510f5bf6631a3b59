"""The library's layers, checked over every import (function-level ones included):

    errors -> contracts -> engines -> grounding -> pipeline -> longdoc -> {batch, eval, view} -> adapters -> {cli, client} (and service/)

A module may import from its own package and from lower layers; packages of one layer do not
import each other; nothing under extractor/ imports the service. The one exception is listed in
EXCEPTIONS with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS: list[set[str]] = [
    {"errors"}, {"contracts"}, {"engines"}, {"grounding"}, {"pipeline"}, {"longdoc"}, {"batch", "eval", "view"}, {"adapters"},
    {"cli", "client"},
]
#: (importing module, imported module): the `Extractor` SDK, in pipeline/, runs a document through
#: longdoc (chunks when it is too long) with its schema's LoRA adapter from the adapters' registry.
#: The SDK belongs above both; moving it out of pipeline/ is left to do.
EXCEPTIONS = {("extractor/pipeline/extractor.py", "extractor.adapters.registry"),
              ("extractor/pipeline/extractor.py", "extractor.longdoc")}
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str | None:
    """`extractor.pipeline.loop` -> `pipeline`; the package root (`extractor`) itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "extractor" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


MODULES = sorted(p for p in (ROOT / "extractor").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
                 or p.parent != ROOT / "extractor")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path: Path) -> None:
    own = path.relative_to(ROOT / "extractor").parts[0].removesuffix(".py")
    assert own in RANK, f"{own} is in no layer: add it to LAYERS"
    for name in _imports(path):
        assert not name.startswith("service"), f"{path.name} imports the service ({name})"
        if any(str(path.relative_to(ROOT)) == where and name.startswith(what) for where, what in EXCEPTIONS):
            continue
        target = _package(name)
        if target is None or target == own or target not in RANK:
            continue
        assert RANK[target] < RANK[own], f"{own} (layer {RANK[own]}) imports {name} (layer {RANK[target]})"


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in (ROOT / "extractor").iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and not p.name.startswith("__"))}
    assert packages == set(RANK)
