"""`person`: who someone is, from a short mention."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from extractor.contracts.contract import Contract


class Person(Contract):
    # version 2: `age` and `city` are nullable (version 1 required them, so a document without an
    # age got one invented). No few-shot examples: version 1's two ("Maria Garcia is 41 ... Valencia",
    # "Tom Becker (29) moved to Hamburg") leaked into 29 fields of the 40 person dev documents
    # (bench/results/eval_person_examples.json) and into held-out ones (issue 13: 0.70 of fields
    # right with them, 0.92 zero-shot); `bench/eval_person_examples.py` compares the variants.
    contract_name = "person"
    contract_version = "2"
    instructions = "Extract the person described in the document: full name, age in years, city, and email if given."

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
