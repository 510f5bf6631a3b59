"""The schema registry: names -> Tasks.

Built-in contracts come from the `schemas` package. Users add theirs without
editing the project: a Python module whose `Contract` subclasses get
registered (`--schemas mypkg.schemas`), or a raw JSON Schema file path used
in place of a name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from extractor.contracts.contract import Contract, Task, task_from_file, task_from_model
from extractor.errors import SchemaRejected, UnknownSchema


class SchemaRegistry:
    def __init__(self, models: Iterable[type[BaseModel]] = ()) -> None:
        self._tasks: dict[str, Task[Any]] = {}
        for m in models:
            self.register(m)

    def register(self, model: type[BaseModel]) -> Task[Any]:
        task = task_from_model(model)
        self._tasks[task.name] = task
        return task

    def register_task(self, task: Task[Any]) -> Task[Any]:
        self._tasks[task.name] = task
        return task

    def load_module(self, module_path: str) -> list[str]:
        """Register every `Contract` subclass with a `contract_name` defined in a module."""
        try:
            module = importlib.import_module(module_path)
        except Exception as exc:  # not a module name (`../x`: TypeError), not found, or its code fails
            raise UnknownSchema(f"cannot import schema module {module_path!r}: {type(exc).__name__}: {exc}") from exc
        names = []
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Contract) and obj.contract_name:
                names.append(self.register(obj).name)
        if not names:
            raise UnknownSchema(f"module {module_path!r} defines no Contract subclass with a contract_name")
        return names

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def get(self, name_or_path: str) -> Task[Any]:
        """A registered name, or the path of a raw JSON Schema file."""
        if name_or_path in self._tasks:
            return self._tasks[name_or_path]
        if name_or_path.endswith(".json") or Path(name_or_path).is_file():
            if not Path(name_or_path).is_file():
                raise UnknownSchema(f"schema file not found: {name_or_path}")
            return task_from_file(name_or_path)
        raise UnknownSchema(f"unknown schema {name_or_path!r}; known: {', '.join(self.names())}")

    def resolve(self, schema: str | type[BaseModel] | Task[Any]) -> Task[Any]:
        if isinstance(schema, Task):
            return schema
        if isinstance(schema, str):
            return self.get(schema)
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            cached = self._by_model(schema)
            return cached if cached is not None else task_from_model(schema)
        raise SchemaRejected("$", f"not a schema: {schema!r}")

    def _by_model(self, model: type[BaseModel]) -> Task[Any] | None:
        for task in self._tasks.values():
            if task.model is model:
                return task
        return None


def default_registry() -> SchemaRegistry:
    """A registry holding the built-in schemas."""
    from schemas import BUILTIN

    return SchemaRegistry(BUILTIN)
