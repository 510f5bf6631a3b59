"""Long documents read by rows: the rows of a list are found before decoding, each chunk of rows is
decoded with one item per row (the grammar holds the model to them), the other fields are asked
of the document without its rows, and every value's span points into the whole document.

`lazy` below is a scripted model that stops after two items unless the schema it is given makes
it write more: what a small model does with a long list (bench/results/eval_long_vllm.json)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from extractor import Extractor, GenerationRequest, GenerationResult, ScriptedEngine
from extractor.contracts.contract import task_from_model
from extractor.engines.base import Message
from extractor.errors import DocumentTooLarge, ExtractionFailed
from extractor.grounding.decoding import offers
from extractor.grounding.rows import RowText, constrain_rows
from extractor.longdoc.merge import chunk_record, merge_records
from extractor.longdoc.rows import column_fields, find_rows, header_view, list_item, row_chunks
from extractor.longdoc.run import LongRun, needs_chunks
from extractor.longdoc.split import Excerpt, split_document
from extractor.longdoc.tasks import RECORDS, rows_task
from extractor.pipeline.options import ExtractOptions
from fixtures.long.generate import documents
from schemas.invoice import Invoice
from schemas.person import Person
from schemas.statement import Statement
from tests.long_support import ITEM, answer, chunk_text, read_invoice, read_people

DOCS = {d["id"]: d for d in documents()}


def _plan(doc_id: str, model: Any, field: str | None) -> Any:
    schema = task_from_model(model).strict_schema
    item = list_item(schema["properties"][field], schema) if field else schema
    assert item is not None
    return find_rows(DOCS[doc_id]["text"], item, schema, field or RECORDS, many=field is None)


def _list_name(schema: dict[str, Any]) -> str:
    return next(n for n, node in schema["properties"].items() if node.get("type") == "array")


def lazy(request: GenerationRequest) -> str:
    """Reads the chunk as a perfect model would, but gives at most two list items unless the
    schema's `minItems` asks for more."""
    props = request.schema.get("properties", {})
    text = chunk_text(request)
    record: dict[str, Any] = read_people(text) if RECORDS in props else read_invoice(text)
    for name, node in props.items():
        if isinstance(record.get(name), list):
            record[name] = record[name][:max(2, int(node.get("minItems", 0)))]
    return answer(request, record)


# -- finding rows --------------------------------------------------------------------------------

def test_the_rows_of_an_invoice_are_its_item_lines_with_cells_by_column() -> None:
    plan = _plan("invoice-03-90", Invoice, "line_items")
    text = DOCS["invoice-03-90"]["text"]
    assert plan.firm and len(plan.rows) == 90
    for row, item in zip(plan.rows, DOCS["invoice-03-90"]["label"]["line_items"], strict=True):
        assert text[row.start:row.end].rstrip("\n") == row.text and ITEM.match(row.text)
        assert row.cells["description"] == item["description"]
        assert float(row.cells["quantity"]) == item["quantity"]
        assert float(row.cells["unit_price"].replace(",", "")) == item["unit_price"]
        assert row.header is not None and row.header.text.strip("\f").startswith("Description")


def test_the_rows_of_a_statement_are_its_transactions_not_its_balance_lines() -> None:
    plan = _plan("statement-01-90", Statement, "transactions")
    label = DOCS["statement-01-90"]["label"]["transactions"]
    assert plan.firm and len(plan.rows) == len(label) == 90
    assert not any("balance" in r.text.lower() for r in plan.rows)
    for row, item in zip(plan.rows, label, strict=True):  # the amount column, not the running balance
        assert float(row.cells["amount"]) == item["amount"] and row.cells["date"] == item["date"]


def test_the_rows_of_a_staff_report_are_its_paragraphs_headings_excepted() -> None:
    plan = _plan("staff-02-40", Person, None)
    assert len(plan.rows) == 41  # 40 people and the introduction; the SECTION headings are no rows
    assert not any(r.text.strip("\f").startswith("SECTION") for r in plan.rows)
    intro, *people = plan.rows
    assert intro.text.startswith("This report") and not intro.firm  # not shaped like the others: may be none
    assert all(p.firm for p in people)  # "Name Surname, 61, lives ...": one record each


def test_paragraphs_of_no_common_shape_are_all_firm() -> None:
    text = "Anna Berg runs the lab.\n\nThe lab in Graz has 4 people, led by Bruno Costa.\n\n(c) Chiara Rossi\n"
    schema = task_from_model(Person).strict_schema
    plan = find_rows(text, schema, schema, RECORDS, many=True)
    assert plan is not None and len(plan.rows) == 3 and plan.firm


def test_column_names_match_field_names_by_words_and_abbreviation() -> None:
    header = "Item description     Qty   Unit price   VAT %   Line total"
    assert column_fields(header, ["description", "quantity", "unit_price"]) == {
        0: "description", 1: "quantity", 2: "unit_price"}
    assert column_fields("Date   Text   Amount   Balance", ["date", "description", "amount"]) == {0: "date", 2: "amount"}


def test_a_list_whose_rows_print_no_text_has_no_row_plan() -> None:
    text = "Items\nHammer, steel\n2  12.50  25.00\nSaw\n1  30.00  30.00\n"
    schema = task_from_model(Invoice).strict_schema
    item = list_item(schema["properties"]["line_items"], schema)
    assert item is not None and find_rows(text, item, schema, "line_items", many=False) is None


def test_the_header_view_is_the_document_without_its_rows_and_repeated_table_headers() -> None:
    doc = DOCS["invoice-06-150"]
    plan = _plan("invoice-06-150", Invoice, "line_items")
    view = header_view(doc["text"], list(plan.rows))
    assert view is not None
    assert not any(ITEM.match(line) for line in view.text.splitlines())
    assert view.text.count("Unit price") == 1 and "Total due:" in view.text and doc["label"]["vendor"] in view.text
    assert len(view.text) < 1200 < len(doc["text"])
    for k in range(len(view.text)):  # every character maps to the same character of the document
        assert doc["text"][view.to_document(k)] == view.text[k]


def test_row_chunks_carry_their_table_header_and_map_back_to_the_document() -> None:
    doc = DOCS["invoice-05-130"]
    plan = _plan("invoice-05-130", Invoice, "line_items")
    chunks = row_chunks(doc["text"], list(plan.rows), 1500)
    assert [r for _, group in chunks for r in group] == list(plan.rows)  # every row once, in order
    sizes = [len(group) for _, group in chunks]
    assert max(sizes) - min(sizes) <= 2  # spread evenly
    for excerpt, group in chunks:
        lines = excerpt.text.splitlines()
        assert lines[0].startswith("Description") and lines[1:] == [r.text for r in group]
        for k in range(len(excerpt.text)):
            assert doc["text"][excerpt.to_document(k)] == excerpt.text[k]


def test_an_excerpt_slice_is_an_excerpt_of_the_document() -> None:
    text = "abc\ndef\nghi\njkl\n"
    excerpt = Excerpt(0, text, ((0, 4), (8, 12)))
    assert excerpt.text == "abc\nghi\n"
    part = excerpt.slice(2, 6, 1)
    assert part.text == "c\ngh" and part.segments == ((2, 4), (8, 10))
    assert [text[part.to_document(k)] for k in range(len(part.text))] == list(part.text)
    with pytest.raises(ValueError):
        Excerpt(0, text, ((4, 8), (0, 2)))


# -- one item per row, held by the grammar --------------------------------------------------------

def test_each_row_can_only_be_read_as_its_own_item() -> None:
    plan = _plan("invoice-01-60", Invoice, "line_items")
    task = rows_task(task_from_model(Invoice), "line_items", 500)
    rows = list(plan.rows[:12])
    schema = constrain_rows(task.strict_schema, "line_items", [r.as_text() for r in rows])
    array = schema["properties"]["line_items"]
    assert array["minItems"] == array["maxItems"] == len(array["prefixItems"]) == 12 and array["items"] is False
    for row, node in zip(rows, array["prefixItems"], strict=True):
        props = node["properties"]
        assert props["quantity"]["enum"] == [float(row.cells["quantity"])]
        assert props["unit_price"]["enum"] == [float(row.cells["unit_price"].replace(",", ""))]
        assert offers(props["description"], row.cells["description"])
        assert not offers(props["description"], row.cells["description"].split()[0])


def test_a_statement_row_offers_its_amount_not_its_balance() -> None:
    plan = _plan("statement-00-60", Statement, "transactions")
    task = rows_task(task_from_model(Statement), "transactions", 500)
    row = plan.rows[2]
    (node,) = constrain_rows(task.strict_schema, "transactions", [row.as_text()])["properties"]["transactions"][
        "prefixItems"]
    assert node["properties"]["amount"]["enum"] == [float(row.cells["amount"])]
    assert node["properties"]["date"]["enum"] == [row.cells["date"]]


def test_without_cells_a_row_offers_only_its_own_spans_and_amounts() -> None:
    task = rows_task(task_from_model(Invoice), "line_items", 500)
    rows = [RowText("Hammer, steel  2  12.50  25.00"), RowText("Saw  1  30.00  30.00")]
    schema = constrain_rows(task.strict_schema, "line_items", rows)
    first, _second = schema["properties"]["line_items"]["prefixItems"]
    variants = first["anyOf"]
    # the line total is no price, and the count (2) is not offered the money (12.50)
    assert {(v["properties"]["quantity"]["enum"][0], v["properties"]["unit_price"]["enum"][0]) for v in variants} == {
        (2, 12.5)}
    span = schema["$defs"][variants[0]["properties"]["description"]["$ref"].rsplit("/", 1)[1]]
    assert offers(span, "Hammer, steel") and not offers(span, "Saw")


def test_loose_rows_may_be_null_and_ungrounded_rows_keep_only_the_count() -> None:
    task = rows_task(task_from_model(Invoice), "line_items", 500)
    rows = [RowText("Hammer  2  12.50"), RowText("Saw  1  30.00")]
    loose = constrain_rows(task.strict_schema, "line_items", rows, nullable=True)["properties"]["line_items"]
    assert all({"type": "null"} in node["anyOf"] for node in loose["prefixItems"])
    plain = constrain_rows(task.strict_schema, "line_items", rows, grounded=False)["properties"]["line_items"]
    assert plain["minItems"] == plain["maxItems"] == 2 and "prefixItems" not in plain
    rows[1] = RowText("Saw  1  30.00", optional=True)
    mixed = constrain_rows(task.strict_schema, "line_items", rows)["properties"]["line_items"]["prefixItems"]
    assert {"type": "null"} not in mixed[0].get("anyOf", []) and {"type": "null"} in mixed[1]["anyOf"]
    plain = constrain_rows(task.strict_schema, "line_items", rows, grounded=False)["properties"]["line_items"]
    assert (plain["minItems"], plain["maxItems"]) == (1, 2) and plain["items"] == task.strict_schema[
        "properties"]["line_items"]["items"]  # no null: a model offered null answers null


def test_a_model_that_stops_short_still_gives_every_row() -> None:
    doc = DOCS["invoice-07-180"]
    engine = ScriptedEngine(lazy)
    result = Extractor(engine).run("invoice", doc["text"], spans=True)
    assert result.data.model_dump(mode="json") == doc["label"]
    assert result.meta.long["plan"] == "rows" and result.meta.long["rows"] == 180
    row_requests = [r for r in engine.requests if "line_items" in r.schema["properties"]]
    assert all(r.schema["properties"]["line_items"]["minItems"] == len(_rows(r)) for r in row_requests)
    _check_spans(doc, result)


def test_many_records_one_per_paragraph() -> None:
    doc = DOCS["staff-03-50"]
    engine = ScriptedEngine(lazy)
    result = Extractor(engine).run("person", doc["text"], many=True, spans=True, grounded_decoding=True)
    assert [p.model_dump() for p in result.data] == doc["label"]
    for k, person in enumerate(result.data):
        (name,) = result.meta.spans[f"[{k}].name"]
        assert doc["text"][name.start:name.end] == person.name
    requests = [r for r in engine.requests if RECORDS in r.schema["properties"]]
    node = requests[0].schema["properties"][RECORDS]
    assert node["minItems"] == len(node["prefixItems"]) and {"type": "null"} in node["prefixItems"][0]["anyOf"]
    assert all({"type": "null"} not in n.get("anyOf", []) for n in node["prefixItems"][1:])  # a person each


def _eager(request: GenerationRequest) -> str:
    """`lazy`, but reads a record into the introduction too (as SmolLM2-135M did)."""
    text = chunk_text(request)
    if text.startswith("This report"):
        return json.dumps({RECORDS: [{"name": "This report", "age": 20, "city": None, "email": None}]})
    return lazy(request)


def test_a_paragraph_of_another_shape_is_settled_by_the_count_the_document_prints() -> None:
    doc = DOCS["staff-01-30"]  # "This report introduces 30 employees": 30 paragraphs of one shape, and that one
    async def stream(text: str) -> list[dict[str, Any]]:
        return [e async for e in Extractor(ScriptedEngine(_eager)).astream("person", text, many=True,
                                                                            grounded_decoding=True)]

    result = Extractor(ScriptedEngine(_eager)).run("person", doc["text"], many=True, grounded_decoding=True)
    assert [p.model_dump() for p in result.data] == doc["label"]
    assert result.meta.long["loose_rows"] == 1 and result.meta.long["loose_left_out"] == 1
    events = asyncio.run(stream(doc["text"]))
    assert [e["data"] for e in events if e["event"] == "record"] == doc["label"]  # never sent, then taken back
    uncounted = doc["text"].replace("introduces 30 employees", "introduces our employees")
    kept = Extractor(ScriptedEngine(_eager)).run("person", uncounted, many=True, grounded_decoding=True)
    assert kept.data[0].name == "This report" and len(kept.data) == 31  # no count to settle it: kept


def test_a_list_of_50_rows_that_fits_the_context_is_still_read_by_rows() -> None:
    doc = DOCS["invoice-00-50"]
    engine = _BudgetEngine(lazy, context=32_768)
    task = Extractor(engine).task("invoice")
    assert needs_chunks(engine, task, doc["text"], ExtractOptions())
    result = Extractor(engine).run("invoice", doc["text"])
    assert result.data.model_dump(mode="json") == doc["label"]


# -- the header fields ----------------------------------------------------------------------------

def test_header_fields_are_asked_once_of_the_document_without_its_rows_and_required() -> None:
    doc = DOCS["invoice-09-230"]
    engine = ScriptedEngine(lazy)
    result = Extractor(engine).run("invoice", doc["text"], spans=True)
    (header,) = [r for r in engine.requests if "vendor" in r.schema.get("properties", {})]
    assert not any(ITEM.match(line) for line in chunk_text(header).splitlines())
    assert "line_items" not in header.schema["properties"]
    for name in ("vendor", "invoice_number", "date", "currency", "total"):
        node = header.schema["properties"][name]
        assert name in header.schema["required"] and {"type": "null"} not in node.get("anyOf", [])
    text = doc["text"]
    (total,) = result.meta.spans["total"]
    assert text[total.start:total.end] == f"{doc['label']['total']:,.2f}"
    (number,) = result.meta.spans["invoice_number"]
    assert text[number.start:number.end] == doc["label"]["invoice_number"]


def test_the_merge_keeps_the_value_a_chunk_gives_over_the_nulls_of_the_others() -> None:
    text = "ACME Ltd\nCurrency: EUR\n" + "row\n" * 40 + "Total 12.50\n"
    chunks = split_document(text, 60)
    records = [chunk_record(c, {"currency": None, "total": None}) for c in chunks]
    records[0] = chunk_record(chunks[0], {"currency": "EUR", "total": None})
    records[-1] = chunk_record(chunks[-1], {"currency": None, "total": 12.5})
    schema = {"properties": {"currency": {"type": "string"}, "total": {"type": "number"}}}
    merged = merge_records(records, schema, {}, text)
    assert merged.data == {"currency": "EUR", "total": 12.5} and merged.conflicts == []


def test_a_total_the_rows_contradict_reruns_the_header_view_only() -> None:
    doc = DOCS["invoice-02-75"]
    wrong = {"told": False}

    def misread_total(request: GenerationRequest) -> str:
        record = json.loads(lazy(request))
        if "total" in record and not any(m["content"].startswith("That JSON") for m in request.messages):
            record["total"] = 55.0  # the first reading of the header view is wrong
        elif "total" in record:
            wrong["told"] = True
        return json.dumps(record)

    engine = ScriptedEngine(misread_total)
    result = Extractor(engine).run("invoice", doc["text"])
    assert result.data.total == doc["label"]["total"] and wrong["told"]
    headers = [r for r in engine.requests if "total" in r.schema.get("properties", {})]
    assert len(headers) == 2 and len(engine.requests) == result.meta.long["chunks"] + 1
    assert result.meta.long["retried_chunks"] == [result.meta.long["chunks"] - 1]


def test_a_document_of_rows_only_is_not_read_again_for_fields_no_piece_can_give() -> None:
    """Issue 17's one-line invoice of 400 amounts: the whole document is rows, no header piece is
    left to read the vendor, date or total, so the failed merge is final after one reading (a
    re-run of the rows cost the local engine another 13 s of prefill for nothing)."""
    text = "Widget " + " ".join(f"{1000 + i}.{(i * 37) % 100:02d}" for i in range(400))
    engine = ScriptedEngine(['{"line_items":[{"description":"Widget","quantity":1,"unit_price":1000.0}]}'])
    with pytest.raises(ExtractionFailed) as failed:
        Extractor(engine, grounded_decoding=False, chunk_tokens=512).run("invoice", text)
    assert "$.vendor" in str(failed.value)
    assert len(engine.requests) == 1


# -- the context --------------------------------------------------------------------------------

class _BudgetEngine(ScriptedEngine):
    """A scripted engine with a context (a token a word) that refuses what does not fit, as vLLM does."""

    def __init__(self, outputs: Any, context: int) -> None:
        super().__init__(outputs)
        self.context_length = context

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        for r in requests:
            if self.count_prompt_tokens(r.messages) + r.max_tokens > self.context_length:
                raise DocumentTooLarge(f"prompt plus {r.max_tokens} exceeds {self.context_length}")
        return await super().generate(requests)


def test_a_retry_that_would_overflow_the_context_sends_the_document_and_the_errors_only() -> None:
    schema = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 5}}, "required": ["word"]}
    from extractor import task_from_json_schema

    task = task_from_json_schema(schema, name="word")
    document = " ".join(["lorem"] * 300)
    replies = [json.dumps({"word": "x " * 400}), json.dumps({"word": "lorem"})]
    engine = _BudgetEngine(lambda r: replies.pop(0), context=1000)
    result = Extractor(engine).run(task, document, max_retries=1)
    assert result.data == {"word": "lorem"}
    retry = engine.requests[1]
    assert [m["role"] for m in retry.messages][-2:] == ["user", "user"]  # the document, then the errors
    assert "That JSON was rejected" in retry.messages[-1]["content"]


def test_every_chunk_prompt_and_twice_its_budget_fit_the_context() -> None:
    engine = _BudgetEngine(lazy, context=8192)
    for doc in (DOCS["invoice-11-300"], DOCS["statement-03-150"]):
        run = LongRun(engine, task_from_model(Invoice if doc["schema"] == "invoice" else Statement), doc["text"],
                      ExtractOptions())
        for job in run.jobs:
            from extractor.pipeline.prompt import build_messages

            used = engine.count_prompt_tokens(build_messages(job.task, job.piece.text))
            assert used + 2 * job.task.max_tokens <= engine.context_length


# -- spans ----------------------------------------------------------------------------------------

def _rows(request: GenerationRequest) -> list[str]:
    return [line for line in chunk_text(request).splitlines() if ITEM.match(line)]


def _check_spans(doc: dict[str, Any], result: Any) -> None:
    """Every item's every value points at its characters, all on the item's own row."""
    text = doc["text"]
    for k, item in enumerate(result.data.line_items):
        (desc,) = result.meta.spans[f"line_items[{k}].description"]
        (qty,) = result.meta.spans[f"line_items[{k}].quantity"]
        (price,) = result.meta.spans[f"line_items[{k}].unit_price"]
        assert text[desc.start:desc.end] == item.description
        assert float(text[qty.start:qty.end]) == item.quantity
        assert float(text[price.start:price.end].replace(",", "")) == item.unit_price
        line_start = text.rfind("\n", 0, desc.start) + 1
        assert desc.start < qty.start < price.start and text.count("\n", line_start, price.end) == 0


def test_a_repeated_row_is_two_items_each_on_its_own_line() -> None:
    doc = DOCS["invoice-08-200"]
    result = Extractor(ScriptedEngine(lazy)).run("invoice", doc["text"], spans=True)
    items = [i.model_dump() for i in result.data.line_items]
    assert items == doc["label"]["line_items"]
    repeated = [i for i in {json.dumps(x) for x in items} if sum(json.dumps(x) == i for x in items) > 1]
    assert repeated  # the fixture buys some items twice
    starts = [result.meta.spans[f"line_items[{k}].description"][0].start for k in range(len(items))]
    assert len(set(starts)) == len(items) and starts == sorted(starts)
    _check_spans(doc, result)


def test_streaming_by_rows_sends_each_item_once() -> None:
    doc = DOCS["invoice-04-110"]

    async def go() -> list[dict[str, Any]]:
        return [e async for e in Extractor(ScriptedEngine(lazy)).astream("invoice", doc["text"])]

    events = asyncio.run(go())
    items = [e for e in events if e["event"] == "item"]
    assert len({(e["start"], e["end"]) for e in items}) == len(items) == 110
    assert [e["data"] for e in sorted(items, key=lambda e: e["start"])] == events[-1]["data"]["line_items"]
    fields = {e["field"]: e["value"] for e in events if e["event"] == "field"}
    assert fields["total"] == doc["label"]["total"]

