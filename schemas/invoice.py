"""`invoice`: a supplier invoice with line items that must add up."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from extractor.contracts.contract import Contract, Example


class Currency(StrEnum):
    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"
    CHF = "CHF"
    JPY = "JPY"
    CAD = "CAD"
    AUD = "AUD"
    SEK = "SEK"
    NOK = "NOK"
    DKK = "DKK"
    PLN = "PLN"
    INR = "INR"
    CNY = "CNY"


class LineItem(Contract):
    description: str = Field(description="What was sold")
    quantity: float = Field(ge=0, description="Number of units")
    unit_price: float = Field(description="Price of one unit")


class Invoice(Contract):
    contract_name = "invoice"
    contract_version = "1"
    #: every value is printed in the document: decoded only as what it prints (document_constraint)
    grounded_decoding = True
    #: over a long invoice, chunks that read different totals: the amount printed after "Total"
    merge_rules: ClassVar[dict[str, str]] = {"total": "nearest:total"}
    instructions = (
        "Extract the invoice: who issued it, its number, its date as YYYY-MM-DD, the currency code, "
        "every line item with quantity and unit price, and the total amount due."
    )
    examples = (
        Example(
            document=(
                "ACME Tools Ltd\nInvoice no. INV-0042\nDate: 3 March 2024\n"
                "2 x Hammer @ 12.50 GBP\n1 x Saw @ 30.00 GBP\nTotal: 55.00 GBP"
            ),
            record={
                "vendor": "ACME Tools Ltd",
                "invoice_number": "INV-0042",
                "date": "2024-03-03",
                "currency": "GBP",
                "line_items": [
                    {"description": "Hammer", "quantity": 2, "unit_price": 12.5},
                    {"description": "Saw", "quantity": 1, "unit_price": 30.0},
                ],
                "total": 55.0,
            },
        ),
    )

    vendor: str = Field(description="Company that issued the invoice")
    invoice_number: str = Field(description="Invoice number or reference")
    date: dt.date = Field(description="Invoice date, ISO format YYYY-MM-DD")
    currency: Currency = Field(description="ISO 4217 currency code")
    line_items: list[LineItem] = Field(min_length=1, description="Each billed item")
    total: float = Field(description="Total amount due")

    @model_validator(mode="after")
    def items_add_up(self) -> Invoice:
        computed = sum(i.quantity * i.unit_price for i in self.line_items)
        if abs(computed - self.total) > max(0.01, 0.005 * abs(self.total)):
            raise ValueError(
                f"line items add up to {computed:.2f} but total is {self.total:.2f}; "
                "check quantities, unit prices and the total"
            )
        return self
