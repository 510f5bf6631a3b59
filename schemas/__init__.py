"""The task schemas shipped with the project.

Each is a `Contract` (a Pydantic v2 model with a name, version,
instructions and few-shot examples). `BUILTIN` lists them for the registry.
"""

from schemas.invoice import Invoice, LineItem
from schemas.job_posting import JobPosting, SalaryRange
from schemas.person import Person
from schemas.receipt import Receipt, ReceiptItem
from schemas.statement import Statement, Transaction

BUILTIN = (Person, Invoice, Receipt, JobPosting, Statement)

__all__ = ["BUILTIN", "Invoice", "JobPosting", "LineItem", "Person", "Receipt", "ReceiptItem", "SalaryRange",
           "Statement", "Transaction"]
