"""`receipt`: a shop receipt, values as printed (SROIE-style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from extractor.contracts.contract import Contract, Example
from schemas.receipt_candidates import receipt_candidates


class ReceiptItem(Contract):
    description: str = Field(description="Item as printed")
    amount: str = Field(description="Amount as printed")


class Receipt(Contract):
    contract_name = "receipt"
    # version 2: `items` can only be null on a receipt where no line can be an item (a card slip:
    # only "AMOUNT" and "Total" lines), where SmolLM2 invented the 4 card slips' items of the dev set
    contract_version = "2"
    #: every value is printed in the document: decoded only as what it prints (document_constraint)
    grounded_decoding = True

    @classmethod
    def field_candidates(cls, document: str) -> Mapping[str, Sequence[str | None]]:
        """Company, address, date and total: a few ranked candidates from rules general to shop
        receipts (schemas/receipt_candidates.py) instead of every span of the document; items
        null only where no line can be one."""
        return receipt_candidates(document)
    instructions = "Extract the receipt's company, address, date and total exactly as printed, and the items if listed."
    examples = (
        Example(
            document="KEDAI RUNCIT ALI\nNO 5, JALAN MAWAR, 43000 KAJANG\n12/05/2018 14:02\nMILO 1KG 18.90\nTOTAL 18.90",
            record={
                "company": "KEDAI RUNCIT ALI",
                "address": "NO 5, JALAN MAWAR, 43000 KAJANG",
                "date": "12/05/2018",
                "total": "18.90",
                "items": [{"description": "MILO 1KG", "amount": "18.90"}],
            },
        ),
    )

    company: str = Field(description="Shop or company name as printed")
    address: str = Field(description="Address as printed")
    date: str = Field(description="Date as printed")
    total: str = Field(description="Total amount as printed")
    items: list[ReceiptItem] | None = Field(default=None, description="Purchased items, or null if not listed")
