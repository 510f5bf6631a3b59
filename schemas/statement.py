"""`statement`: a bank or card statement with its transactions."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from pydantic import Field

from extractor.contracts.contract import Contract, Example


class Transaction(Contract):
    date: dt.date = Field(description="Booking date, ISO format YYYY-MM-DD")
    description: str = Field(description="The transaction's text as printed")
    amount: float = Field(description="Amount; negative for a debit")


class Statement(Contract):
    contract_name = "statement"
    contract_version = "1"
    grounded_decoding = True
    instructions = ("Extract the account statement: the account holder, the account number, the currency code, "
                    "every transaction with its date as YYYY-MM-DD, text and signed amount, and the closing balance.")
    examples = (
        Example(
            document=("Account holder: Jan Novak\nAccount: CZ65 0800 0000 1920 0014 5399\nCurrency: CZK\n"
                      "2024-02-01  Grocery store  -420.50\n2024-02-03  Salary ACME  35000.00\nClosing balance: 41250.10"),
            record={"account_holder": "Jan Novak", "account_number": "CZ65 0800 0000 1920 0014 5399",
                    "currency": "CZK",
                    "transactions": [{"date": "2024-02-01", "description": "Grocery store", "amount": -420.5},
                                     {"date": "2024-02-03", "description": "Salary ACME", "amount": 35000.0}],
                    "closing_balance": 41250.1},
        ),
    )
    #: a long statement prints running balances: the closing one is the one after "Closing balance"
    merge_rules: ClassVar[dict[str, str]] = {"closing_balance": "nearest:closing balance"}

    account_holder: str = Field(description="Name of the account holder")
    account_number: str = Field(description="Account number or IBAN as printed")
    currency: str = Field(description="ISO 4217 currency code")
    transactions: list[Transaction] = Field(description="Every transaction, in order")
    closing_balance: float | None = Field(description="Closing balance")
