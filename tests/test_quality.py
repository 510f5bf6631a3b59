"""Issue 13: partial labels, invented and copied-from-example values in `extract eval`; nullable
person fields; what a validator dropped in `meta.changed`; a contract's candidate rules offered by
grounded decoding; the receipt rules. No model (the model tests are in test_quality_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extractor import Extractor, ScriptedEngine, default_registry
from extractor.contracts.contract import Example
from extractor.errors import DocumentError
from extractor.eval.leaks import leak_counts, leaks, occurs_in
from extractor.eval.metrics import aggregate, field_paths, score_record, spec_from_schema
from extractor.eval.report import build_report
from extractor.eval.run import DocumentOutcome, EvalRun, label_errors, read_dataset
from extractor.grounding.candidates import offer_candidates
from extractor.grounding.decoding import candidate_numbers, constrain_to_document
from extractor.pipeline.validate import validator_changes
from schemas.receipt_candidates import receipt_candidates

PERSON = default_registry().get("person")
RECEIPT = default_registry().get("receipt")
OLD_EXAMPLES = (
    Example("Maria Garcia is 41 years old and lives in Valencia.", {"name": "Maria Garcia", "age": 41, "city": "Valencia"}),
    Example("Tom Becker (29) moved to Hamburg last year.", {"name": "Tom Becker", "age": 29, "city": "Hamburg"}),
)


# --- partial labels ---------------------------------------------------------------------------

def test_a_label_may_leave_fields_out_or_give_null_for_a_required_one(tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    rows = [{"id": "r1", "text": "KEDAI ALI\n12/05/2018\nTOTAL 18.90",
             "expected": {"company": "KEDAI ALI", "date": "12/05/2018", "total": "18.90"}},  # no address, no items
            {"id": "r2", "text": "KEDAI ALI\nTOTAL 1.00", "expected": {"company": "KEDAI ALI", "date": None}}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    docs = read_dataset(data, RECEIPT)
    assert [d.id for d in docs] == ["r1", "r2"]
    # a value the label gives is still checked against the schema
    assert label_errors(RECEIPT, {"company": 7}, "x") == ["$.company: 7 is not of type 'string'"]
    data.write_text(json.dumps({"text": "x", "expected": {"company": 7}}))
    with pytest.raises(DocumentError, match="company"):
        read_dataset(data, RECEIPT)


def test_an_unlabeled_field_is_not_scored_and_a_null_one_counts_invented_values() -> None:
    spec = spec_from_schema(RECEIPT.strict_schema)
    paths = field_paths(spec)
    predicted = {"company": "KEDAI ALI", "address": "JALAN 5", "date": "12/05/2018", "total": "9.00",
                 "items": [{"description": "MILO", "amount": "9.00"}]}
    unlabeled = score_record({"company": "KEDAI ALI", "date": None}, predicted, spec)
    assert set(unlabeled) == {"company", "date"}  # address, total and items (with its sub-fields) unlabeled
    assert (unlabeled["date"].absent, unlabeled["date"].invented, unlabeled["date"].fp) == (1, 1, 1)
    stats = aggregate([(unlabeled, True), (score_record({"company": "X", "address": "JALAN 5"}, predicted, spec), True)],
                      paths)
    assert (stats["company"].docs, stats["company"].exact_docs) == (2, 1)
    assert (stats["address"].docs, stats["address"].exact_docs, stats["total"].docs) == (1, 1, 0)
    assert stats["date"].invented_rate == 1.0 and stats["items"].docs == 0


def _run(outcomes: list[DocumentOutcome]) -> EvalRun:
    return EvalRun(task=PERSON.__class__(**{**PERSON.__dict__, "examples": OLD_EXAMPLES}), engine="fake", model="m",
                   dataset="d", outcomes=outcomes, seconds=1.0, max_retries=0)


def test_report_counts_copied_and_invented_values_per_field() -> None:
    text = "Subject: Welcome aboard, Ana!\nPlease welcome Ana Souza, our new data engineer."
    welcome = DocumentOutcome("w", {"name": "Ana Souza", "age": None, "city": None, "email": None},
                              {"name": "Ana Souza", "age": 29, "city": "Hamburg", "email": None}, None, 1, text=text)
    # 41 and Valencia are in this document: equal to an example's values, but not copied
    real = DocumentOutcome("r", {"name": "Rosa Diaz", "age": 41}, {"name": "Rosa Diaz", "age": 41, "city": "Valencia",
                                                                  "email": None}, None, 1,
                           text="Rosa Diaz, 41, lives in Valencia.")
    report = build_report(_run([welcome, real]))
    fields = report["fields"]
    assert (fields["age"]["copied"], fields["city"]["copied"], fields["name"]["copied"]) == (1, 1, 0)
    assert (fields["age"]["absent"], fields["age"]["invented"]) == (1, 1)
    assert fields["city"]["docs"] == 1  # unlabeled in the second document
    assert report["summary"]["copied"] == 2 and report["summary"]["invented"] == 2
    assert report["summary"]["fields_right"] == round(4 / 6, 4)
    assert report["per_document"][0]["copied"] == ["age", "city"] and report["per_document"][1]["copied"] == []


def test_leaks_compare_numbers_as_numbers_and_find_numbers_written_in_words() -> None:
    assert [(leak.path, leak.example) for leak in leaks(OLD_EXAMPLES, {"age": "29.0", "city": "hamburg"}, "Ana")] == [
        ("age", 1), ("city", 1)]
    assert occurs_in(29, "she turned twenty-nine") and not occurs_in(29, "Apt 290")
    assert leak_counts(OLD_EXAMPLES, [({"items": [{"a": 41}, {"a": 41}]}, "x")]) == {"items[].a": 2}


# --- person version 2 -------------------------------------------------------------------------

def test_person_age_and_city_are_nullable_since_version_2() -> None:
    assert PERSON.version == "3"
    assert label_errors(PERSON, {"name": "Priya Raman", "age": None, "city": None, "email": None}, "Priya Raman") == []
    result = Extractor(ScriptedEngine(['{"name":"Priya Raman","age":null,"city":"Toronto","email":null}'])).run(
        "person", "Best regards,\nPriya Raman\nToronto, ON")
    assert result.data_dict() == {"name": "Priya Raman", "age": None, "city": "Toronto", "email": None}


# --- what a validator dropped ------------------------------------------------------------------

def test_an_email_the_validator_drops_is_reported_in_meta_changed() -> None:
    doc = "Best regards,\nPriya Raman\nToronto, ON\npriya.raman@northwind.ca"
    written = '{"name":"Priya Raman","age":null,"city":"Toronto","email":"priya.ramen@northwind.ca"}'
    result = Extractor(ScriptedEngine([written])).run("person", doc)
    assert result.data.email is None
    assert result.meta.changed == {"email": "priya.ramen@northwind.ca"}
    assert result.to_dict()["meta"]["changed"] == {"email": "priya.ramen@northwind.ca"}
    kept = Extractor(ScriptedEngine([written.replace("ramen", "raman")])).run("person", doc)
    assert kept.meta.changed is None and "changed" not in kept.to_dict()["meta"]


JOB_WRITTEN = {"title": "Data Analyst", "company": "Pebble Payments", "location": "remote",
               "employment_type": "full_time", "skills": ["SQL"],
               "salary_range": {"minimum": 60000, "maximum": 75000, "currency": "EUR", "period": "year"}}


@pytest.mark.parametrize(("advert", "kept"), [
    ("Data Analyst at Pebble Payments, remote, full-time. SQL. Salary: competitive.", False),
    ("Data Analyst at Pebble Payments, remote. SQL. We offer a competitive salary and 28 days of holiday.", False),
    ("Data Analyst at Pebble Payments, remote. SQL. Salary 60,000-75,000 EUR per year.", True),
    ("Data Analyst at Pebble Payments, remote. SQL. €60,000 to €75,000 a year.", True),
    ("Data Analyst at Pebble Payments, remote. SQL. Pay: 60000-75000 yearly.", True),
])
def test_a_salary_in_an_advert_that_prints_no_pay_is_dropped_and_reported(advert: str, kept: bool) -> None:
    result = Extractor(ScriptedEngine([json.dumps(JOB_WRITTEN)])).run("job_posting", advert)
    if kept:
        assert result.data.salary_range is not None and result.meta.changed is None
    else:
        assert result.data.salary_range is None
        assert result.meta.changed == {"salary_range.minimum": 60000, "salary_range.maximum": 75000,
                                       "salary_range.currency": "EUR", "salary_range.period": "year"}


def test_validator_changes_ignore_numbers_of_another_type_and_report_nested_paths() -> None:
    assert validator_changes({"a": 3, "b": [{"c": "x"}], "d": None}, {"a": 3.0, "b": [{"c": None}], "d": None}) == {
        "b[0].c": "x"}


# --- candidates --------------------------------------------------------------------------------

RECEIPT_TEXT = """MYDIN
SYARIKAT PERNIAGAAN GIN KEE SDN BHD (81109-A)
NO 290, JALAN AIR PANAS,
SETAPAK, 53200 KUALA LUMPUR.
TEL : 03-40210276
GST ID : 000750673920
TAX INVOICE
DATE : 09/01/2018 14:41
ITEM QTY PRICE
MILO 1KG 1 18.90
TOTAL GST 1.07
TOTAL : 18.90
ROUNDING 0.00
CASH 20.00
CHANGE 1.10"""


def test_receipt_rules_rank_the_legal_name_the_address_block_the_printed_date_and_the_total() -> None:
    found = receipt_candidates(RECEIPT_TEXT)
    assert found["company"][0] == "SYARIKAT PERNIAGAAN GIN KEE SDN BHD"
    assert found["address"][0] == "NO 290, JALAN AIR PANAS, SETAPAK, 53200 KUALA LUMPUR."
    assert found["date"] == ["09/01/2018"]
    assert found["total"][0] == "18.90" and "1.07" not in found["total"][:1]


def test_grounded_decoding_offers_a_contracts_candidates_and_keeps_null() -> None:
    schema = offer_candidates(constrain_to_document(RECEIPT.strict_schema, RECEIPT_TEXT),
                              {"company": ["A SDN BHD", "A"], "address": [], "items": ["x"]})
    props = schema["properties"]
    assert props["company"]["enum"] == ["A SDN BHD", "A"]
    assert props["address"] == {"$ref": "#/$defs/DocumentSpan"}  # no candidate: every span, as before
    assert "enum" not in json.dumps(props["items"]["anyOf"][1])  # not a string field: left alone
    nullable = offer_candidates(PERSON.strict_schema, {"city": ["Lisbon", None]})["properties"]["city"]
    assert nullable["anyOf"] == [{"type": "string", "enum": ["Lisbon"]}, {"type": "null"}]
    found = offer_candidates(PERSON.strict_schema, {"email": ["a@example.org"]})["properties"]["email"]
    assert found["enum"] == ["a@example.org"] and "anyOf" not in found  # no None offered: a value must be chosen


def test_the_receipt_contract_decodes_the_date_among_its_candidates_only() -> None:
    engine = ScriptedEngine(['{"company":"SYARIKAT PERNIAGAAN GIN KEE SDN BHD","address":"NO 290, JALAN AIR PANAS, '
                             'SETAPAK, 53200 KUALA LUMPUR.","date":"09/01/2018","total":"18.90","items":null}'])
    Extractor(engine).run("receipt", RECEIPT_TEXT)
    props = engine.requests[0].schema["properties"]
    assert props["date"]["enum"] == ["09/01/2018"]  # the date line "DATE : 09/01/2018 14:41" is no address
    assert "DATE : 09/01/2018 14:41" not in props["address"]["enum"]
    assert RECEIPT.field_candidates is not None and PERSON.field_candidates is not None


def test_a_phone_numbers_country_code_is_no_amount_for_grounded_decoding() -> None:
    doc = "Best regards,\nPriya Raman\nToronto, ON\n+1 416 555 0199\npriya.raman@northwind.ca"
    age = constrain_to_document(PERSON.strict_schema, doc)["properties"]["age"]
    assert "enum" not in json.dumps(age)  # no amount printed: the age is left free (or null), never 1
    assert 1 not in candidate_numbers("Tel +49 89 1234 5678\nMILO 2 x 3.50")


@pytest.mark.parametrize(("name", "size", "styles", "no_age"), [("person_styles", 40, 20, 10),
                                                              ("person_heldout", 24, 20, 8)])
def test_the_hand_written_person_sets_are_valid_and_their_labels_are_in_the_text(
        name: str, size: int, styles: int, no_age: int) -> None:
    path = Path(__file__).resolve().parent.parent / "fixtures" / "dev" / f"{name}.jsonl"
    docs = read_dataset(path, PERSON)
    assert len(docs) >= size and len({json.loads(line)["style"] for line in path.read_text().splitlines()}) >= styles
    for doc in docs:
        for field in ("name", "city", "email"):
            value = doc.expected[field]
            # a name may be printed as surname and first name on two labels: each word is printed
            assert value is None or all(w.casefold() in doc.text.casefold() for w in value.split()), (doc.id, field)
    assert sum(d.expected["age"] is None for d in docs) >= no_age


def test_a_value_equal_to_the_documents_label_is_not_a_copy() -> None:
    """job_posting's dev set: `full_time` for a posting that writes "Full-time", as the example
    does: right, and the document's own category, not copied from the example."""
    examples = [{"document": "Full-time role in Berlin.", "record": {"employment_type": "full_time", "city": "Berlin"}}]
    document = "Full-time position, Munich office."
    record = {"employment_type": "full_time", "city": "Berlin"}
    assert [leak.path for leak in leaks(examples, record, document)] == ["employment_type", "city"]
    label = {"employment_type": "full_time", "city": "Munich"}
    assert [leak.path for leak in leaks(examples, record, document, label)] == ["city"]


def test_a_card_slips_items_can_only_be_null_and_a_shops_receipt_keeps_its_items_open() -> None:
    """SmolLM2 invented items for all 4 card slips of the receipt dev set ("AMOUNT 13.00" read as an
    item). No line of a card slip can be an item; a receipt printing item lines is left alone (none
    of the 300 SROIE receipts loses its items)."""
    slip = ("Green Leaf Florist\nUnit 4, Market Arcade,\nWellington 6011\n\nInvoice/Receipt 313-28672\n"
            "Sep 24, 2021 16:37:58\n****\nCARD PAYMENT\nAUTH CODE 729679\nAMOUNT                     13.50\n"
            "Total                      13.50\n24.05.2022 19:17\nThank you")
    shop = "Corner Books\n18 High Street\nGreeting card               3.25\nTOTAL 3.25\nCASH 10.00\nCHANGE 6.75"
    assert receipt_candidates(slip)["items"] == [None]
    assert "items" not in receipt_candidates(shop) and "items" not in receipt_candidates(RECEIPT_TEXT)
    engine = ScriptedEngine(['{"company":"Green Leaf Florist","address":"Unit 4, Market Arcade, Wellington 6011",'
                             '"date":"Sep 24, 2021","total":"13.50","items":null}'])
    Extractor(engine).run("receipt", slip)
    assert engine.requests[0].schema["properties"]["items"]["type"] == "null"
