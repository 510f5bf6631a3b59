"""`job_posting`: a job advert."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import Field, model_validator

from extractor.contracts.contract import Contract, Example

_CURRENCY = r"(?:[$€£¥₹]|\b(?:USD|EUR|GBP|CAD|AUD|NZD|CHF|SEK|NOK|DKK|PLN|CZK|HUF|JPY|CNY|INR|SGD|HKD|BRL|MXN|ZAR)\b)"
_AMOUNT = r"\d[\d,.' ]*\d?\s*[kK]?"
_PAY_WORD = (r"\b(?:salary|salaries|pay|paid at|compensation|remuneration|wage|wages|rate|budget|ote|"
             r"gehalt|vergütung|salaire|rémunération|salario|sueldo|stipendio|salário|loon|lön)\b")
#: after a pay word, a number that is money: thousands, "55k", or so much an hour ("28 days" is not)
_PAY_NUMBER = r"(?:\d{1,3}(?:[,.' ]\d{3})+|\d{3,}|\d+(?:\.\d+)?\s?[kK]\b|\d+(?:\.\d+)?\s*(?:/|per |an |a )\s*(?:hour|hr|h)\b)"
#: a salary is printed: an amount beside a currency, or an amount shortly after a pay word on its line
SALARY_CUE = re.compile(
    rf"{_CURRENCY}\s?{_AMOUNT}|{_AMOUNT}\s?{_CURRENCY}|{_PAY_WORD}[^\n\d]{{0,40}}{_PAY_NUMBER}", re.IGNORECASE)


def salary_stated(document: str) -> bool:
    """Whether the advert prints a salary: "Salary: competitive" and "40 hours/week" do not."""
    return SALARY_CUE.search(document) is not None


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
    # version 2: `salary_range` can only be null where the advert prints no salary (SmolLM2 filled
    # it on every one of the 9 dev adverts without one, twice with the example's 60,000-75,000)
    contract_version = "2"
    #: every value is printed in the document: decoded only as what it prints (document_constraint)
    grounded_decoding = True

    @classmethod
    def field_candidates(cls, document: str) -> Mapping[str, Sequence[object]]:
        """`salary_range` null only where no salary is printed (`salary_stated`); the other
        fields are left to grounded decoding."""
        return {} if salary_stated(document) else {"salary_range": [None]}
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
