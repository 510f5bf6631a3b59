"""`job_posting`: a job advert."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from extractor.contracts.contract import Contract, Example


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
