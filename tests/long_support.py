"""A reading engine for long-document tests: a `ScriptedEngine` script that reads the chunk in
its prompt with regular expressions, as a perfect model would, and answers the chunk task."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from extractor.engines.base import GenerationRequest
from extractor.pipeline.prompt import CLOSE, OPEN

ITEM = re.compile(r"^(?P<d>[A-Za-z][A-Za-z &]*?(?: [\w.]+)*?)\s{2,}(?P<q>\d+)\s+(?P<p>[\d,]+\.\d\d)\s+[\d,]+\.\d\d$",
                  re.MULTILINE)
PERSON = re.compile(r"^(?P<n>[A-Z][a-z]+ [A-Z][a-z]+), (?P<a>\d+), lives in (?P<c>[A-Z][a-z]+)", re.MULTILINE)


def chunk_text(request: GenerationRequest) -> str:
    content = request.messages[-1]["content"]
    if content.startswith("That JSON was rejected"):
        content = next(m["content"] for m in reversed(request.messages) if m["content"].startswith(OPEN))
    return content.removeprefix(OPEN + "\n").removesuffix("\n" + CLOSE)


def read_invoice(text: str) -> dict[str, Any]:
    items = [{"description": m["d"].strip(), "quantity": int(m["q"]), "unit_price": float(m["p"].replace(",", ""))}
             for m in ITEM.finditer(text)]
    vendor = text.split("\n", 1)[0].strip() if "INVOICE" in text else None
    number = re.search(r"Invoice number: (\S+)", text)
    printed = re.search(r"Invoice date: (\d\d \w+ \d{4})", text)
    date = dt.datetime.strptime(printed[1], "%d %B %Y").date().isoformat() if printed else None
    total = re.search(r"Total due: ([\d,]+\.\d\d)", text)
    currency = re.search(r"Currency: ([A-Z]{3})", text)
    return {"vendor": vendor, "invoice_number": number[1] if number else None, "date": date,
            "currency": currency[1] if currency else None, "line_items": items,
            "total": float(total[1].replace(",", "")) if total else None}


def read_people(text: str) -> dict[str, Any]:
    return {"records": [{"name": m["n"], "age": int(m["a"]), "city": m["c"], "email": None}
                        for m in PERSON.finditer(text)]}


def answer(request: GenerationRequest, record: dict[str, Any]) -> str:
    """`record` with only the fields `request` asks for, as JSON."""
    asked = request.schema.get("properties", {})
    return json.dumps({k: v for k, v in record.items() if k in asked})


def reader(request: GenerationRequest) -> str:
    """The answer a perfect model would give to the chunk in `request` (the fields it asks for)."""
    text = chunk_text(request)
    if "records" in request.schema.get("properties", {}):
        return json.dumps(read_people(text))
    return answer(request, read_invoice(text))
