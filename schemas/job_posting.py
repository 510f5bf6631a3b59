"""`job_posting`: a job advert."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator, model_validator

from extractor.contracts.contract import Contract, Example

#: a currency (symbol or ISO code) printed beside an amount, or a pay word shortly before an amount
_CURRENCY = r"(?:[$€£¥₹₩₽]|\b(?:USD|EUR|GBP|CAD|AUD|NZD|CHF|SEK|NOK|DKK|PLN|CZK|HUF|JPY|CNY|INR|SGD|HKD|ZAR|BRL|MXN)\b)"
_AMOUNT = r"\d[\d.,' ]*\s?[kK]?"
_STATES_PAY = re.compile(
    rf"{_CURRENCY}\s?\d|\d[\d.,]*\s?[kK]?\s?{_CURRENCY}"
    rf"|\b(?:salary|pay|compensation|wage|rate|remuneration|gehalt|salario|salaire)\b\s*"
    rf"(?:[:=\u2013-]|of|is|from|up to|between|starting at|range)?\s*(?:[:=]\s*)?{_AMOUNT}",
    re.IGNORECASE)


def states_pay(document: str) -> bool:
    """Whether the advert prints an amount of pay: a currency beside a number ("€5,400", "3,500 PLN",
    "£58k"), or a pay word shortly before a number ("Salary: 50000"). "A competitive salary" and
    "28 days of holiday" are not."""
    return _STATES_PAY.search(document) is not None


class EmploymentType(StrEnum):
    FULL_TIME = "full_time"
    PART_TIME = "part_time"
    CONTRACT = "contract"
    TEMPORARY = "temporary"
    INTERNSHIP = "internship"


class SalaryRange(Contract):
    minimum: float = Field(description="Lowest salary offered")
    maximum: float = Field(description="Highest salary offered")
    currency: str = Field(description="Currency code, e.g. USD")
    period: str = Field(description="year, month or hour")

    @model_validator(mode="after")
    def ordered(self) -> SalaryRange:
        if self.minimum > self.maximum:
            raise ValueError(f"salary minimum {self.minimum} is above maximum {self.maximum}")
        return self


class JobPosting(Contract):
    contract_name = "job_posting"
    contract_version = "1"
    #: every value is printed in the document: decoded only as what it prints (document_constraint)
    grounded_decoding = True
    instructions = "Extract the job posting: title, hiring company, location, employment type, salary range if stated, and required skills."
    examples = (
        Example(
            document=(
                "Nimbus Labs is hiring a Backend Engineer in Berlin (full-time). "
                "Salary 60,000-75,000 EUR per year. You know Python, PostgreSQL and Docker."
            ),
            record={
                "title": "Backend Engineer",
                "company": "Nimbus Labs",
                "location": "Berlin",
                "employment_type": "full_time",
                "salary_range": {"minimum": 60000, "maximum": 75000, "currency": "EUR", "period": "year"},
                "skills": ["Python", "PostgreSQL", "Docker"],
            },
        ),
    )

    title: str = Field(description="Job title")
    company: str = Field(description="Hiring company")
    location: str = Field(description="City or 'remote'")
    employment_type: EmploymentType = Field(description="Kind of employment")
    salary_range: SalaryRange | None = Field(default=None, description="Salary range, or null if not stated")
    skills: list[str] = Field(description="Required skills")

    @field_validator("salary_range")
    @classmethod
    def salary_only_if_stated(cls, value: SalaryRange | None, info: ValidationInfo) -> SalaryRange | None:
        """A salary is never guessed: in an advert that prints no amount of pay (`states_pay`) it
        becomes null, and `meta.changed` keeps what the model wrote.

        (SmolLM2 wrote a salary for 9 of the 9 dev adverts without one. Forcing null in the grammar
        instead changed what it wrote after it: fewer skills, and 15 of 32 adverts valid.)"""
        document = (info.context or {}).get("document")
        if value is not None and document is not None and not states_pay(document):
            return None
        return value
