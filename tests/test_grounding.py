"""Source grounding (extractor/grounding.py): pure, on hand-made documents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractor import task_from_model
from extractor.grounding.fieldpath import dollar_path, field_key, field_path
from extractor.grounding.spans import (
    Grounder,
    Span,
    date_forms,
    fold,
    free_text_paths,
    ground_record,
    number_forms,
    ungrounded_errors,
)
from schemas import Invoice, JobPosting, Person

INVOICE_DOC = ("ACME Tools Ltd\nInvoice no. INV-0042\nDate: 3 March 2024\n"
               "2 x Hammer @ 12.50 GBP\n1 x Saw @ 30.00 GBP\nTotal: 55.00 GBP")


def texts(doc: str, spans: list[Span]) -> list[str]:
    return [doc[s.start:s.end] for s in spans]


def test_exact_finds_every_occurrence_at_word_boundaries_only() -> None:
    doc = "Ali met Alice. Ali left; alias Ali."
    found = Grounder(doc).text("Ali")
    assert [(s.start, s.match) for s in found] == [(0, "exact"), (15, "exact"), (31, "exact")]
    assert texts(doc, found) == ["Ali"] * 3


def test_normalized_folds_case_accents_quotes_dashes_and_whitespace_and_maps_back() -> None:
    doc = "Contact:  JOSÉ   Müller-Lüdenscheidt, “Acme” full-time\n  (Lisbon)"
    g = Grounder(doc)
    cases = {"jose muller lüdenscheidt": "JOSÉ   Müller-Lüdenscheidt", '"acme"': "“Acme”",
             "Full_Time": "full-time", "josé müller": "JOSÉ   Müller"}
    for value, original in cases.items():
        (span,) = g.text(value)
        assert span.match == "normalized"
        assert doc[span.start:span.end] == original


def test_exact_wins_over_normalized() -> None:
    doc = "alice smith wrote to Alice Smith"
    assert Grounder(doc).text("Alice Smith") == [Span(21, 32, "exact")]


def test_fuzzy_takes_the_best_word_window_above_the_threshold() -> None:
    doc = "Shipped to Mr Jonathon Smyth of Bristol yesterday."
    (span,) = Grounder(doc).text("Jonathan Smith")
    assert span.match == "fuzzy" and doc[span.start:span.end] == "Jonathon Smyth"
    assert Grounder(doc).text("Rebecca Jones") == []  # nothing close enough
    assert Grounder(doc, fuzzy_threshold=0.99).text("Jonathan Smith") == []


def test_fuzzy_never_matches_other_digits() -> None:
    doc = "Invoice no. INV-0042, see also order 7781."
    assert Grounder(doc).text("INV-0043") == []
    (near,) = Grounder(doc).text("INV 0042 ")
    assert doc[near.start:near.end] == "INV-0042"


def test_short_values_are_never_fuzzy() -> None:
    assert Grounder("Bob lives here").text("Rob") == []


def test_numbers_are_found_literally_never_inside_a_longer_number() -> None:
    g = Grounder(INVOICE_DOC)
    assert texts(INVOICE_DOC, g.number(12.5)) == ["12.50"] and g.number(12.5)[0].match == "normalized"
    assert texts(INVOICE_DOC, g.number(55.0)) == ["55.00"]
    assert texts(INVOICE_DOC, g.number(30)) == ["30.00"]
    assert [s.match for s in g.number(2)] == ["exact"]
    assert g.number(5) == [] and g.number(0.5) == []  # "55.00", "12.50" hold no 5 of their own
    doc = "Price 1,200 EUR, age 34."
    assert texts(doc, Grounder(doc).number(1200)) == ["1,200"]
    assert texts(doc, Grounder(doc).number(34)) == ["34"] and Grounder(doc).number(34)[0].match == "exact"


def test_number_forms() -> None:
    assert number_forms(34)[0] == "34"
    assert {"12.5", "12.50", "12,50"} <= set(number_forms(12.5))
    assert {"1,234.50", "1.234,50", "1 234,50"} <= set(number_forms(1234.5))


def test_iso_dates_are_found_as_written() -> None:
    g = Grounder(INVOICE_DOC)
    (span,) = g.text("2024-03-03")
    assert INVOICE_DOC[span.start:span.end] == "3 March 2024" and span.match == "normalized"
    doc = "Issued March 3rd, 2024; due 04/04/2024"
    assert texts(doc, Grounder(doc).text("2024-03-03")) == ["March 3rd, 2024"]
    assert texts(doc, Grounder(doc).text("2024-04-04")) == ["04/04/2024"]
    assert Grounder(doc).text("2024-03-04") == []
    assert date_forms("not a date") == []


def test_ground_record_keys_every_string_and_number_by_path() -> None:
    data = {"vendor": "ACME Tools Ltd", "invoice_number": "INV-0042", "date": "2024-03-03", "currency": "GBP",
            "line_items": [{"description": "Hammer", "quantity": 2, "unit_price": 12.5},
                           {"description": "Chisel", "quantity": 1, "unit_price": 30.0}],
            "total": 55.0, "paid": False, "note": None}
    spans = ground_record(data, INVOICE_DOC)
    assert set(spans) == {"vendor", "invoice_number", "date", "currency", "line_items[0].description",
                          "line_items[0].quantity", "line_items[0].unit_price", "line_items[1].description",
                          "line_items[1].quantity", "line_items[1].unit_price", "total"}
    assert texts(INVOICE_DOC, spans["line_items[0].description"]) == ["Hammer"]
    assert spans["line_items[1].description"] == []  # "Chisel" occurs nowhere
    assert texts(INVOICE_DOC, spans["total"]) == ["55.00"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab cÉé\n-“”'"), min_size=1, max_size=40), st.data())
def test_every_span_holds_the_value_exactly_or_folded(doc: str, data: Any) -> None:
    start = data.draw(st.integers(0, len(doc) - 1))
    end = data.draw(st.integers(start + 1, len(doc)))
    value = doc[start:end]
    for span in Grounder(doc).text(value):
        assert 0 <= span.start < span.end <= len(doc)
        if span.match == "exact":
            assert doc[span.start:span.end] == value.strip()
        elif span.match == "normalized":
            assert fold(doc[span.start:span.end]) == fold(value)


def test_free_text_paths_skip_enums_formats_and_follow_refs_and_nullables() -> None:
    invoice = task_from_model(Invoice)
    data = {"vendor": "V", "invoice_number": "1", "date": "2024-01-02", "currency": "EUR",
            "line_items": [{"description": "a", "quantity": 1, "unit_price": 1}], "total": 1}
    assert free_text_paths(data, invoice.strict_schema) == [("vendor",), ("invoice_number",),
                                                           ("line_items", 0, "description")]
    job = task_from_model(JobPosting)
    posting = {"title": "Dev", "company": "C", "location": "Rome", "employment_type": "full_time",
               "salary_range": {"minimum": 1, "maximum": 2, "currency": "EUR", "period": "year"}, "skills": ["Go", ""]}
    paths = free_text_paths(posting, job.strict_schema)
    assert ("employment_type",) not in paths and ("salary_range", "currency") in paths and ("skills", 0) in paths
    assert ("skills", 1) not in paths  # an empty string claims nothing


def test_ungrounded_errors_name_the_path_and_the_value() -> None:
    person = task_from_model(Person)
    doc = "Alice Smith is 34 years old and lives in Lisbon."
    data = {"name": "Maria Garcia", "age": 34, "city": "Lisbon", "email": None}
    errors = ungrounded_errors(data, person.strict_schema, ground_record(data, doc))
    assert errors == ["$.name: 'Maria Garcia' does not occur in the document; copy the value exactly as the "
                      "document writes it"]
    good = {**data, "name": "alice smith"}
    assert ungrounded_errors(good, person.strict_schema, ground_record(good, doc)) == []


@pytest.mark.parametrize(("parts", "path", "dollar", "key"), [
    (("name",), "name", "$.name", "name"),
    (("items", 0, "description"), "items[0].description", "$.items[0].description", "items[].description"),
    ((2,), "[2]", "$[2]", "[]"),
    ((), "", "$", ""),
])
def test_field_paths(parts: tuple[Any, ...], path: str, dollar: str, key: str) -> None:
    assert (field_path(parts), dollar_path(parts), field_key(path)) == (path, dollar, key)


def test_span_round_trips_through_a_dict() -> None:
    span = Span(3, 9, "fuzzy")
    assert Span.from_dict(span.to_dict()) == span
    with pytest.raises(ValueError):
        Span.from_dict({"start": 0, "end": 1, "match": "guessed"})
