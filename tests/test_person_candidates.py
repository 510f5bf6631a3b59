"""The person contract's candidate rules (extractor/grounding/person_rules.py) and how grounded decoding
offers them: integers, and `null` only where the text gives nothing."""

from __future__ import annotations

import json

import pytest

from extractor import Extractor
from extractor.contracts.contract import task_from_model
from extractor.engines.fake import ScriptedEngine
from extractor.grounding.candidates import offer_candidates
from extractor.grounding.person_rules import person_candidates
from schemas.person import Person

PERSON = task_from_model(Person)


@pytest.mark.parametrize(("text", "field", "first"), [
    ("Registration form\nName: Tobias Chen\nAge: 44\nCity of residence: Da Nang", "age", 44),
    ("Registration form\nName: Tobias Chen\nAge: 44\nCity of residence: Da Nang", "city", "Da Nang"),
    ("Hi, I'm Sam Kowalski, 23 y/o, just moved to Kraków", "name", "Sam Kowalski"),
    ("Hi, I'm Sam Kowalski, 23 y/o, just moved to Kraków", "age", 23),
    ("Hi, I'm Sam Kowalski, 23 y/o, just moved to Kraków", "city", "Kraków"),
    ("Meet Siobhan Kelly, twenty-eight, a nurse who lives in Cork.", "age", 28),
    ("| Name | Age | City |\n|---|---|---|\n| Fatima Zahra Benali | 38 | Casablanca |", "name", "Fatima Zahra Benali"),
    ("employee_id,full_name,age,city\nE-2291,Ingrid Johansson,49,Gothenburg", "city", "Gothenburg"),
    ("Best regards,\nHenrik Lund\nStrandgata 14, 5013 Bergen, Norway", "city", "Bergen"),
    ("Ship to: Hannah Schmidt, 12 Kingsway Avenue, Apt 29, Manchester M19 2LL", "city", "Manchester"),
    ("Bilbao resident Sinead M. Chen, 46, was named volunteer of the year.", "name", "Sinead M. Chen"),
    ("Bilbao resident Sinead M. Chen, 46, was named volunteer of the year.", "city", "Bilbao"),
    ("Firefighter Tomasz Zielinski, 39, of Gdansk, was praised.", "city", "Gdansk"),
])
def test_the_first_candidate_is_what_the_text_says(text: str, field: str, first: object) -> None:
    assert person_candidates(text)[field][0] == first


@pytest.mark.parametrize("text", [
    "CURRICULUM VITAE\n\nElena Petrova\nBased in Sofia, Bulgaria · born 1990",  # a birth year is no age
    "Client intake\nName: Luis Ferreira\nDOB: 04/11/1988\nCurrently lives in Faro.",
    "Best regards,\nPriya Raman\nToronto, ON\n+1 416 555 0199",  # a phone number's digits are no age
    "Please send 12 kg of flour to Ana Souza; the order is 40 units.",
])
def test_no_age_where_the_text_prints_none(text: str) -> None:
    assert person_candidates(text)["age"] == [None]


def test_no_email_and_no_city_when_the_text_has_none() -> None:
    found = person_candidates("Reminder: call back Idris Bello about the invoice; he left no email.")
    assert found["name"][0] == "Idris Bello"
    assert found["email"] == [None] and found["city"] == [None]


def test_candidates_are_offered_as_integers_and_a_lone_none_means_null_only() -> None:
    props = offer_candidates(PERSON.strict_schema, {"age": [34, "34", None], "city": [None], "email": []})["properties"]
    assert props["age"]["anyOf"] == [{"type": "integer", "enum": [34]}, {"type": "null"}]
    assert props["city"]["type"] == "null" and "anyOf" not in props["city"]
    assert props["email"] == PERSON.strict_schema["properties"]["email"]  # nothing said: left as it was


def test_the_person_contract_decodes_among_its_candidates() -> None:
    doc = "Posted by Kofi Boateng, Kumasi\nRe: printer drivers\nI'm 67 and still figuring these things out."
    engine = ScriptedEngine(['{"name":"Kofi Boateng","age":67,"city":"Kumasi","email":null}'])
    result = Extractor(engine).run("person", doc)
    assert (result.data.name, result.data.age, result.data.city) == ("Kofi Boateng", 67, "Kumasi")
    props = engine.requests[0].schema["properties"]
    assert props["name"]["enum"][0] == "Kofi Boateng"
    assert props["age"]["anyOf"][0]["enum"] == [67]
    assert props["email"]["type"] == "null"  # no address in the text: the model cannot write one
    assert json.dumps(props).count("Torshavn") == 0


@pytest.mark.parametrize(("text", "field", "values"), [
    # the age of something or someone a person has is not theirs
    ("Welcome, Jonas Berg! He lives in Oslo and has a 3-year-old husky called Loki.", "age", [None]),
    ("Selin Tanaka is a 40-year-old journalist who lives in Porto.", "age", [40, None]),
    # someone else's age, stated with `is`
    ("Ravi: my sister is 25 lol\nRavi: anyway I'm Ravi Shankar, 32, Bangalore", "age", [32, None]),
    # a company after `from` is no place
    ("Reminder: call back Idris Bello about the invoice from Acme Ltd; he left no email.", "city", [None]),
    # where someone lives beats where they grew up
    ("The pharmacist, who grew up in Aarhus, now lives in Bilbao with two cats.", "city", ["Bilbao", None]),
])
def test_what_is_offered(text: str, field: str, values: list[object]) -> None:
    assert person_candidates(text)[field] == values


@pytest.mark.parametrize(("text", "literal", "tail", "flags"), [
    ("Tom Becker (29) moved; tom becker, 31, stayed", "Tom Becker", r"[ \t]*(?:\(|,)[ \t]*(\d{1,3})[ \t]*(?:\)|,)", "i"),
    ("İlker Kaya (40) and İLKER KAYA, 41,", "İlker Kaya", r"[ \t]*(?:\(|,)[ \t]*(\d{1,3})[ \t]*(?:\)|,)", "i"),
    ("Ana Ruiz, here. Ana Ruiz here", "Ana Ruiz", r",?[ \t]+(?:here)\b", ""),
    ("XOslo native; Oslo native", "Oslo", r"[ \t]+(?:native)\b", "w"),
    ("Kim Lee, 30 | Busan; Kim Lee | Seoul", "Kim Lee", r"(?:\s*,\s*\d{1,3})?\s*[,|]\s*", ""),
])
def test_matches_after_a_literal_are_the_ones_a_regex_per_literal_finds(text: str, literal: str, tail: str,
                                                                       flags: str) -> None:
    """`_after` replaces `re.finditer(re.escape(literal) + tail)` (a regex compiled per name):
    the same matches, case folded where the regex was case-insensitive (a letter whose lower case
    is longer, `İ`, takes the regex), `\\b` before the literal where it had one. The callers read a
    match's groups and its end."""
    import re

    from extractor.grounding.person_rules import _after

    compiled = re.compile(tail, re.I if "i" in flags else 0)
    found = [(m.end(), m.groups()) for m in
             _after(text, literal, compiled, ignore_case="i" in flags, word_start="w" in flags)]
    prefix = r"\b" if "w" in flags else ""
    expected = [(m.end(), m.groups()) for m in
                re.finditer(prefix + re.escape(literal) + tail, text, compiled.flags)]
    assert found == expected and found
