"""`person`: who someone is, from a short mention."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from extractor.contracts.contract import Contract, Example


class Person(Contract):
    # version 2: `age` and `city` are nullable (version 1 required them, so a document without an
    # age got one invented)
    contract_name = "person"
    contract_version = "2"
    instructions = "Extract the person described in the document: full name, age in years, city, and email if given."
    examples = (
        Example(
            document="Maria Garcia is 41 years old and lives in Valencia. Reach her at maria.g@example.org.",
            record={"name": "Maria Garcia", "age": 41, "city": "Valencia", "email": "maria.g@example.org"},
        ),
        Example(
            document="Tom Becker (29) moved to Hamburg last year.",
            record={"name": "Tom Becker", "age": 29, "city": "Hamburg", "email": None},
        ),
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
