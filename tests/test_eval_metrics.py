"""Normalisation and scoring of `extract eval` (extractor/eval_metrics.py), against hand-computed numbers."""

from __future__ import annotations

import itertools
import random

import pytest

from extractor import default_registry
from extractor.eval.metrics import (
    Counts,
    FieldStats,
    Spec,
    Tolerance,
    aggregate,
    as_number,
    best_pairing,
    field_paths,
    macro_f1,
    max_weight_assignment,
    micro,
    normalize_date,
    normalize_string,
    score_record,
    spec_from_schema,
    values_equal,
)

STRING, NUMBER, DATE = Spec("string"), Spec("number"), Spec("date")


def spec(name: str) -> Spec:
    return spec_from_schema(default_registry().get(name).strict_schema)


def counts(c: Counts) -> tuple[int, int, int]:
    return (c.tp, c.fp, c.fn)


# --- normalisation ------------------------------------------------------------------------------

def test_strings_ignore_case_and_whitespace_but_not_spelling() -> None:
    assert normalize_string("  Alice\n\tSMITH ") == "alice smith"
    assert values_equal("Straße 5", "STRASSE 5", STRING)  # casefold
    assert values_equal("\uff21\uff23\uff2d\uff25 Ltd", "acme ltd", STRING)  # NFKC: full-width letters
    assert not values_equal("Alice Smith", "Alice Smyth", STRING)
    assert not values_equal("Alice Smith", "Alice Smith.", STRING)


def test_numbers_within_the_tolerance_and_numeric_strings() -> None:
    assert values_equal(12.5, 12.504, NUMBER)
    assert not values_equal(12.5, 12.51, NUMBER)
    assert values_equal(55, 55.0, Spec("integer"))
    assert values_equal("1,234.50", 1234.5, NUMBER)
    assert values_equal(1000, 1009, NUMBER, Tolerance(absolute=0, relative=0.01))
    assert not values_equal(1000, 1011, NUMBER, Tolerance(absolute=0, relative=0.01))
    assert as_number(True) is None and as_number("twelve") is None and as_number(float("nan")) is None


def test_dates_compare_as_iso_dates() -> None:
    assert normalize_date("2024-05-14") == "2024-05-14"
    assert normalize_date("20240514") == "2024-05-14"
    assert normalize_date("2024-05-14T23:10:00Z") == "2024-05-14"
    assert normalize_date("14 May 2024") is None
    assert values_equal("2024-05-14", "2024-05-14T08:00:00", DATE)
    assert not values_equal("2024-05-14", "2024-05-15", DATE)
    assert values_equal("14 May 2024", "14  may 2024", DATE)  # no ISO date on either side: as strings


def test_null_empty_string_and_empty_list_are_all_null() -> None:
    assert values_equal(None, "  ", STRING)
    assert values_equal(None, [], Spec("array", item=STRING))
    assert not values_equal(None, "x", STRING)


def test_spec_of_the_shipped_schemas() -> None:
    inv, job, rec = spec("invoice"), spec("job_posting"), spec("receipt")
    assert inv.children["date"].kind == "date" and inv.children["currency"].kind == "enum"
    assert inv.children["line_items"].item is not None and inv.children["line_items"].item.kind == "object"
    assert job.children["salary_range"].kind == "object" and job.children["salary_range"].nullable
    assert job.children["skills"].item == Spec("string")
    assert rec.children["items"].nullable and rec.children["date"].kind == "string"  # "as printed", not a date
    assert field_paths(inv) == ["vendor", "invoice_number", "date", "currency", "line_items", "line_items[].description",
                                "line_items[].quantity", "line_items[].unit_price", "total"]
    assert field_paths(job)[4:9] == ["salary_range", "salary_range.minimum", "salary_range.maximum",
                                     "salary_range.currency", "salary_range.period"]


# --- scalar fields and nulls ----------------------------------------------------------------------

def test_person_counts_for_each_null_value_case() -> None:
    person = spec("person")
    expected = {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}
    got = score_record(expected, {"name": "alice  smith", "age": 35, "city": None, "email": "a@x.org"}, person)
    assert counts(got["name"]) == (1, 0, 0)      # equal after normalisation: TP
    assert counts(got["age"]) == (0, 1, 1)       # a wrong value: FP + FN
    assert counts(got["city"]) == (0, 0, 1)      # missed: FN
    assert counts(got["email"]) == (0, 1, 0)     # invented: FP
    both_null = score_record(expected, expected, person)["email"]
    assert counts(both_null) == (0, 0, 0) and both_null.exact


def test_a_failed_document_misses_every_expected_value() -> None:
    got = score_record({"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}, None, spec("person"))
    assert [counts(got[f]) for f in ("name", "age", "city", "email")] == [(0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 0)]


def test_aggregate_precision_recall_f1_exact_by_hand() -> None:
    """3 documents of person; the numbers below are worked out by hand."""
    person = spec("person")
    docs = [
        ({"name": "A B", "age": 30, "city": "X", "email": None}, {"name": "a b", "age": 30, "city": "X", "email": None}),
        ({"name": "C D", "age": 40, "city": "Y", "email": "c@d.io"}, {"name": "C D", "age": 41, "city": "Y", "email": None}),
        ({"name": "E F", "age": 50, "city": "Z", "email": None}, None),  # no valid output
    ]
    stats = aggregate([(score_record(e, p, person), p is not None) for e, p in docs], field_paths(person))
    name, age, email = stats["name"], stats["age"], stats["email"]
    assert (name.tp, name.fp, name.fn) == (2, 0, 1)
    assert name.precision == 1.0 and name.recall == pytest.approx(2 / 3) and name.f1 == pytest.approx(0.8)
    assert (age.tp, age.fp, age.fn) == (1, 1, 2)
    assert age.precision == 0.5 and age.recall == pytest.approx(1 / 3) and age.f1 == pytest.approx(0.4)
    assert age.exact_match == pytest.approx(1 / 3)
    # email: nothing predicted, one expected -> precision vacuously 1, recall 0, F1 0
    assert (email.tp, email.fp, email.fn) == (0, 0, 1) and email.precision == 1.0 and email.f1 == 0.0
    assert email.exact_match == pytest.approx(1 / 3)  # doc 1 (null, null); doc 3 failed: exact on nothing
    assert macro_f1(stats, ["name", "age", "city", "email"]) == pytest.approx((0.8 + 0.4 + 0.8 + 0.0) / 4)
    total = micro(stats, ["name", "age", "city", "email"])
    assert (total.tp, total.fp, total.fn) == (5, 1, 5) and total.f1 == pytest.approx(0.625)


def test_field_stats_when_nothing_was_expected_or_predicted() -> None:
    assert FieldStats().f1 == 1.0  # null everywhere, null predicted: nothing to find, nothing wrong
    assert FieldStats(fp=2).precision == 0.0 and FieldStats(fp=2).recall == 1.0 and FieldStats(fp=2).f1 == 0.0


# --- lists --------------------------------------------------------------------------------------

def test_scalar_lists_are_sets() -> None:
    job = spec("job_posting")
    base = {"title": "T", "company": "C", "location": "remote", "employment_type": "full_time", "salary_range": None}
    got = score_record({**base, "skills": ["Python", "SQL", "Docker"]},
                       {**base, "skills": ["sql", "python", "Rust", "Python"]}, job)
    # {python, sql} matched; rust invented; docker missed; the repeated Python counts once (a set)
    assert counts(got["skills"]) == (2, 1, 1)
    assert not got["skills"].exact
    assert score_record({**base, "skills": ["A", "B"]}, {**base, "skills": ["b", "a"]}, job)["skills"].exact


def test_invoice_line_items_matched_by_best_pairing_and_scored_per_sub_field() -> None:
    inv = spec("invoice")
    head = {"vendor": "ACME", "invoice_number": "7", "date": "2024-03-03", "currency": "GBP"}
    expected = {**head, "total": 55.0, "line_items": [
        {"description": "Hammer", "quantity": 2, "unit_price": 12.5},
        {"description": "Saw", "quantity": 1, "unit_price": 30.0}]}
    predicted = {**head, "total": 56.0, "line_items": [  # out of order, one wrong quantity, one extra item
        {"description": "saw", "quantity": 1, "unit_price": 30.001},
        {"description": "Hammer", "quantity": 3, "unit_price": 12.5},
        {"description": "Nails", "quantity": 100, "unit_price": 0.01}]}
    got = score_record(expected, predicted, inv)
    assert counts(got["line_items"]) == (1, 2, 1)                # only Saw is wholly right
    assert counts(got["line_items[].description"]) == (2, 1, 0)  # Nails is unpaired: FP
    assert counts(got["line_items[].quantity"]) == (1, 2, 1)     # 3 vs 2: FP + FN; Nails' 100: FP
    assert counts(got["line_items[].unit_price"]) == (2, 1, 0)
    assert counts(got["total"]) == (0, 1, 1)
    assert counts(got["vendor"]) == (1, 0, 0)


def test_receipt_items_null_is_an_empty_list() -> None:
    rec = spec("receipt")
    head = {"company": "K", "address": "A", "date": "12/05/2018", "total": "18.90"}
    got = score_record({**head, "items": None}, {**head, "items": [{"description": "MILO", "amount": "18.90"}]}, rec)
    assert counts(got["items"]) == (0, 1, 0)
    assert counts(got["items[].description"]) == (0, 1, 0) and counts(got["items[].amount"]) == (0, 1, 0)
    missed = score_record({**head, "items": [{"description": "MILO", "amount": "18.90"}]}, {**head, "items": []}, rec)
    assert counts(missed["items"]) == (0, 0, 1) and counts(missed["items[].amount"]) == (0, 0, 1)
    assert score_record({**head, "items": None}, {**head, "items": []}, rec)["items"].exact


def test_nested_object_null_versus_value() -> None:
    job = spec("job_posting")
    base = {"title": "T", "company": "C", "location": "Oslo", "employment_type": "contract", "skills": ["Go"]}
    salary = {"minimum": 50000, "maximum": 60000, "currency": "EUR", "period": "year"}
    invented = score_record({**base, "salary_range": None}, {**base, "salary_range": salary}, job)
    assert counts(invented["salary_range"]) == (0, 1, 0) and counts(invented["salary_range.minimum"]) == (0, 1, 0)
    wrong_period = score_record({**base, "salary_range": salary}, {**base, "salary_range": {**salary, "period": "month"}}, job)
    assert counts(wrong_period["salary_range"]) == (0, 1, 1)
    assert counts(wrong_period["salary_range.period"]) == (0, 1, 1)
    assert counts(wrong_period["salary_range.maximum"]) == (1, 0, 0)


def test_pairing_prefers_wholly_equal_items_on_a_tie() -> None:
    item = Spec("object", children={"a": STRING, "b": STRING})
    expected = [{"a": "x", "b": "y"}, {"a": "x", "b": "z"}]
    predicted = [{"a": "q", "b": "y"}, {"a": "x", "b": "y"}]
    # (e0,p1)+(e1,p0) has 2 equal sub-fields + 1 whole item; (e0,p0)+(e1,p1) has 2 and none whole
    # (e1, p0) share nothing, so that pair is left out
    assert best_pairing(expected, predicted, item) == [(0, 1)]


def test_max_weight_assignment_is_optimal_on_random_matrices() -> None:
    rng = random.Random(3)
    for _ in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        weight = [[rng.randint(0, 9) for _ in range(cols)] for _ in range(rows)]
        pairs = max_weight_assignment(weight)
        assert len(pairs) == min(rows, cols)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        if rows <= cols:
            best = max(sum(weight[i][j] for i, j in enumerate(c)) for c in itertools.permutations(range(cols), rows))
        else:
            best = max(sum(weight[i][j] for j, i in enumerate(r)) for r in itertools.permutations(range(rows), cols))
        assert sum(weight[i][j] for i, j in pairs) == best
