"""`person`: who someone is, from a short mention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field, ValidationInfo, field_validator

from extractor.contracts.contract import Contract, Example
from extractor.grounding.person_rules import person_candidates


class Person(Contract):
    # version 2: `age` and `city` are nullable (version 1 required them, so a document without an
    # age got one invented). Version 1's examples ("Maria Garcia is 41 ... Valencia", "Tom Becker (29)
    # moved to Hamburg") leaked into 29 fields of the 40 person dev documents
    # (bench/results/eval_person_examples.json); with none at all SmolLM2-135M invented ages even
    # where the text prints one ("Alice Smith, 34, ..." -> 25). These two ("nulls" in
    # bench/eval_person_examples.py) carry values no real document is likely to print, so a copy
    # shows as one (extractor.eval.leaks), and one of them shows a null age and city.
    #
    # version 3: grounded decoding with the ranked candidates of `extractor/grounding/person_rules.py`
    # (names, ages, cities and emails as people's texts print them, in several languages); a field
    # with no candidate can only be null, so a 135M model can neither invent an age nor copy an
    # example's city. Measured in bench/results/eval_person_*.json.
    contract_name = "person"
    contract_version = "3"
    grounded_decoding = True

    @classmethod
    def field_candidates(cls, document: str) -> Mapping[str, Sequence[object]]:
        """Name, age, city and email: a few ranked candidates from rules general to texts about
        people (extractor/grounding/person_rules.py); `[None]` where the text gives none."""
        return person_candidates(document)
    instructions = "Extract the person described in the document: full name, age in years, city, and email if given."
    examples = (
        Example(document="Hi all, please welcome Oyelaran Quispe-Tamm, who joins the test team today. "
                         "Say hello at o.quispe-tamm@example.net.",
                record={"name": "Oyelaran Quispe-Tamm", "age": None, "city": None, "email": "o.quispe-tamm@example.net"}),
        Example(document="Zbigniew Achterberg, 83, still lives in Torshavn.",
                record={"name": "Zbigniew Achterberg", "age": 83, "city": "Torshavn", "email": None}),
    )

    name: str = Field(max_length=120, description="Full name as written in the document")
    age: int | None = Field(default=None, ge=0, le=150,
                            description="Age in years only if the document states it, otherwise null")
    city: str | None = Field(default=None, max_length=120,
                             description="City where the person lives only if the document gives it, otherwise null")
    email: str | None = Field(default=None, max_length=254, description="Email address only if the document contains one, otherwise null")

    @field_validator("email")
    @classmethod
    def email_from_document(cls, value: str | None, info: ValidationInfo) -> str | None:
        """An email is never guessed: one that the document does not contain becomes null.

        (Small models invent plausible addresses and repeat them on retry, so the value is
        dropped instead of failing the whole record.)"""
        document = (info.context or {}).get("document")
        if value is not None and document is not None and value.lower() not in document.lower():
            return None
        return value
