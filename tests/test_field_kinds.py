"""A plain model's fields whose names say what they hold take only candidates from the document
(`extractor/grounding/field_kinds.py`; issue 13's `Contact(name, company, phone)`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from extractor import Extractor, GenerationRequest, GenerationResult, task_from_model
from extractor.grounding.field_kinds import company_candidates, inferred_candidates


class Contact(BaseModel):
    name: str | None
    company: str | None
    phone: str | None


class Product(BaseModel):
    name: str
    price: float


class Company(BaseModel):
    name: str | None
    phone: str | None


def _rules(model: type[BaseModel]) -> Any:
    return inferred_candidates(task_from_model(model).strict_schema)


def test_a_contacts_fields_are_offered_the_name_the_company_and_the_number_printed() -> None:
    rules = _rules(Contact)
    assert rules("Call Jenna Ortiz at Fabrikam on 555-0101.") == {
        "name": ["Jenna Ortiz"], "company": ["Fabrikam", None], "phone": ["555-0101"]}
    # no company and no number printed: both can only be null (SmolLM2 wrote 'Lena Fischer' and 123-456-7890)
    assert rules("Lena Fischer wrote to us yesterday about the order.") == {
        "name": ["Lena Fischer"], "company": [None], "phone": [None]}
    # a company's name is no person's: the company word tells
    assert rules("Please reach Globex Corporation's front desk at (212) 555-7788.") == {
        "name": [None], "company": ["Globex Corporation", None], "phone": ["(212) 555-7788"]}


def test_name_is_a_persons_only_where_the_object_is_about_a_person() -> None:
    assert _rules(Product) is None  # a product's name: nothing inferred, the model decodes as before
    company = _rules(Company)
    assert company is not None and set(company("Contoso Ltd, 555-0101 22")) == {"phone"}


def test_companies_by_label_company_word_cue_and_letterhead() -> None:
    assert company_candidates("Employer: Northwind Traders\nName: Priya Raman") == ["Northwind Traders", None]
    assert company_candidates("Senior Analyst, Northwind Traders") == ["Northwind Traders", None]
    assert company_candidates("Hola, me llamo Carmen Ruiz y trabajo en Telefónica.", ["Carmen Ruiz"]) == [
        "Telefónica", None]
    # a receipt's letterhead: the whole line written in capitals, up to its company word
    assert company_candidates("MR D.I.Y. (JOHOR) SDN BHD\nCO-REG 123\nTOTAL 9.00")[0] == "MR D.I.Y. (JOHOR) SDN BHD"
    # a short company word is one only as written: "as" is no `AS`
    assert company_candidates("Tom Becker as the new lead.") == [None]


class RecordingEngine:
    name, model = "recording", "scripted"

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = json.dumps(answer)
        self.requests: list[GenerationRequest] = []

    async def generate(self, requests: Any) -> list[GenerationResult]:
        self.requests.extend(requests)
        return [GenerationResult(self.answer, "stop", 1, 1) for _ in requests]


def test_the_candidates_go_to_the_engine_by_default_and_not_when_a_call_says_no() -> None:
    text = "Lena Fischer wrote to us yesterday about the order."
    answer = {"name": "Lena Fischer", "company": None, "phone": None}
    default = RecordingEngine(answer)
    assert Extractor(default).extract(Contact, text) == Contact(**answer)
    props = default.requests[0].schema["properties"]
    assert props["company"] == {"type": "null"} and props["phone"] == {"type": "null"}
    assert props["name"] == {"type": "string", "enum": ["Lena Fischer"]}
    off = RecordingEngine(answer)
    Extractor(off, grounded_decoding=False).extract(Contact, text)
    assert off.requests[0].schema == task_from_model(Contact).strict_schema
