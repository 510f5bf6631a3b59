"""The task schemas shipped with the project.

`schemas.statement` (a bank statement, used by the long-document bench) is not registered by
default: it has no dev set. Each is a `Contract` (a Pydantic v2 model with a name, version,
instructions and few-shot examples). `BUILTIN` lists them for the registry.
"""

from schemas.invoice import Invoice, LineItem
from schemas.job_posting import JobPosting, SalaryRange
from schemas.person import Person
from schemas.receipt import Receipt, ReceiptItem

BUILTIN = (Person, Invoice, Receipt, JobPosting)

__all__ = ["BUILTIN", "Invoice", "JobPosting", "LineItem", "Person", "Receipt", "ReceiptItem", "SalaryRange"]
