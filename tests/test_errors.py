from __future__ import annotations

import pytest

from extractor import errors as e


@pytest.mark.parametrize(("exc", "status"), [
    (e.UnknownSchema("x"), 404), (e.SchemaRejected("$", "r"), 422), (e.EmptyDocument("x"), 422),
    (e.UndecodableDocument("x"), 400), (e.DocumentTooLarge("x"), 413), (e.EngineOverloaded("x"), 429),
    (e.EngineTimeout("x"), 504), (e.EngineUnavailable("x"), 503), (e.GrammarNotEnforced("x"), 502),
    (e.ExtractionFailed("x", attempts=1, errors=[]), 422), (e.EngineError("x"), 503), (e.ExtractorError("x"), 500),
])
def test_each_error_maps_to_one_status(exc: e.ExtractorError, status: int) -> None:
    assert e.http_status(exc) == status


def test_codes_are_unique() -> None:
    classes = [c for c in vars(e).values() if isinstance(c, type) and issubclass(c, e.ExtractorError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
