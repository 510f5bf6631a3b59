"""Candidate values for a receipt's company, address, date and total, from its OCR text.

`receipt_candidates(text)` is pure and deterministic: it returns, per field, a short ordered list of
strings (best first) meant as the `enum` of that field for grounded decoding, so the model picks one
of a few plausible spans instead of any span of the document. Every rule is general to shop
receipts (the counts behind each one on sroie-dev are in `bench/receipt_rules.md`); none names a shop.

Values are returned as printed (whitespace inside a line collapsed, lines joined by one space), plus,
for the address and company, a variant with a space after every comma that lacks one (the SROIE
labels write `27, JALAN` where the OCR reads `27,JALAN`) and, for the total, the amount with the
currency prefix it is printed with (`RM 9.00` -> `9.00`, then `RM9.00`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["FIELDS", "receipt_candidates"]

FIELDS = ("company", "address", "date", "total")

#: legal suffixes that end a company's name (`SDN BHD`, `S/B`, `BERHAD`): the strongest mark of the name line
_LEGAL_SUFFIX = re.compile(r"\b(?:SDN\.?\s*BHD\.?|BHD\.?|BERHAD|S/B|PLT|CASH\s*&\s*CARRY)(?![A-Z])")
#: business words that mark a shop's name line where no legal suffix is printed
_COMPANY_MARK = re.compile(
    r"\b(?:SDN\.?\s*BHD\.?|CASH\s*&\s*CARRY|BHD\.?|BERHAD|S/B|PLT|ENTERPRISES?|TRADING|RESTORAN|RESTAURANTS?|HARDWARE|"
    r"MART|STORE|SUPERMARKET|PASARAYA|STATIONERY|BOOKS?|CAFE|KEDAI|FOOD|BAKERY|HOLDINGS|MARKETING|"
    r"CO\.|COMPANY|CORPORATION|INDUSTRIES|SERVICES?|GALLERY|KITCHEN|ELECTRICAL|SHOP|CENTRE|CENTER)(?![A-Z])"
)
#: a line that only finishes a name begun on the line above (`SDN BHD`, `CO. (M) SDN BHD`, `& TEA LEAF ...`)
_CONTINUATION = re.compile(r"^(?:\(?M\)?\s*)?(?:SDN|S/B|BHD|CO\.|CO\s|CP\.|&|\(|ENTERPRISE|TRADING|RESTAURANT|ELECTRICAL|ALAM\))")
#: lines that are no part of a name or an address: registration and tax numbers, phone, document headers
_NOT_ADDRESS = re.compile(
    r"\b(?:TEL|FAX|PHONE|H/P|HP|GST|ROC|CO\.?\s*REG|REG\.?\s*NO|COMPANY\s*NO|CO\.\s*NO|BR\s*NO|SST|TAX|INVOICE|RECEIPT|"
    r"CASH|BILL|DOC|DATE|CASHIER|TABLE|ORDER|EMAIL|E-MAIL|WWW|HTTP|THANK|SLIP|MEMBER|TERMINAL|COUNTER|OPERATOR|"
    r"STATION|SALES|POS|TIME)\b|@|\d{2,4}-\d{6,8}|\d{3}-\d{3,4}\s?\d{4}"
)
#: a registration number alone on a line: `(JM0517726)`, `789417-W`, `(002022599 - U)`, `1227039`
_REG_NUMBER = re.compile(r"^\(?\s*(?:[A-Z]{0,4}\s*[:.]?\s*)?\(?[A-Z]{0,3}\d{4,}\s*-?\s*[A-Z]?\s*\)?\s*\)?$")
#: an address line: a street word, a unit number, a 5-digit postcode or a Malaysian state
_ADDRESS_WORD = re.compile(
    r"\b(?:JALAN|JLN|LORONG|LOT|NO\.?|BLOK|BLOCK|BLK|TAMAN|TMN|BANDAR|KAWASAN|PERSIARAN|LEBUH|LEBUHRAYA|JAYA|"
    r"SEKSYEN|SECTION|FLOOR|TINGKAT|ARAS|PLAZA|MALL|KOMPLEKS|COMPLEX|BATU|KAMPUNG|KG|SELANGOR|JOHOR|KUALA|LUMPUR|"
    r"PERAK|PAHANG|KEDAH|MELAKA|NEGERI|SEMBILAN|PENANG|PULAU|SABAH|SARAWAK|MALAYSIA|DARUL|EHSAN|TAKZIM|"
    r"WILAYAH|PERSEKUTUAN|INDUSTRIAL|PERINDUSTRIAN|ROAD|STREET|AVENUE|PUSAT|PJU|SS|USJ|STRASSE|STRAẞE|STR|CORSO|VIA|RUE|CALLE|AVENIDA|PLATZ|WEG|LANE|HIGH)\b|\b\d{5}\b|^\d+[A-Z]?[,-]"
)
_POSTCODE = re.compile(r"\b\d{5}\b")

_DATE_PATTERNS = (
    r"\d{1,2}/\d{1,2}/\d{4}",  # 25/12/2018
    r"\d{1,2}-\d{1,2}-\d{4}",  # 25-12-2018
    r"\d{4}[-/]\d{1,2}[-/]\d{1,2}",  # 2018-12-25
    r"\d{1,2}\.\d{1,2}\.\d{2,4}",  # 25.12.2018
    r"\d{1,2}\s?[/-]\s?[A-Z]{3}\s?[/-]\s?\d{2,4}",  # 25/DEC/2018, 25-DEC-18
    r"\d{1,2}\s+[A-Z]{3,9}\.?,?\s+\d{4}",  # 25 DEC 2018
    r"\d{1,2}\s+[A-Z]{3}\s+\d{2}",  # 25 DEC 18
    r"[A-Z]{3,9}\.?\s+\d{1,2},?\s+\d{4}",  # DEC 25, 2018
    r"\d{1,2}/\d{1,2}/\d{2}",  # 25/12/18
    r"\d{1,2}-\d{1,2}-\d{2}",  # 25-12-18
    r"20\d{2}[01]\d[0-3]\d",  # 20181225
)
_DATE = re.compile(r"(?<![\w/.-])(?:" + "|".join(_DATE_PATTERNS) + r")(?![\w/-]|\.\d)")
_MONTHS = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}

#: an amount with two decimals, with the currency prefix it is printed with
_AMOUNT = re.compile(r"(?<![\w.,])((?:RM|\$|MYR)\s?)?(-?\d{1,3}(?:,\d{3})*\.\d{2}|-?\d+\.\d{2})(?![\d%]|\.\d)")
_TOTAL_WORD = re.compile(r"TOTAL|JUMLAH|AMOUNT\s*DUE|AMT\s*DUE|PAYABLE|NETT|NET\s*AMOUNT|GRAND")
#: total lines whose amount is not the receipt's total: the tax, the quantity, a subtotal before tax
_NOT_TOTAL = re.compile(r"(?:TOTAL|JUMLAH)\s*(?:GST|TAX|QTY|QUANTITY|ITEMS?|DISC\w*|SAVINGS?|NO)\b|SUB\s*-?\s*TOTAL|EXCL|"
                        r"BEFORE|QTY|CHANGE|TENDER|\bGST\s*\d|\bSR\b|\bZR\b|ROUNDING(?!.*TOTAL)")
#: a payment line: the amount paid is the total when no change is given
_PAYMENT = re.compile(r"\bCASH\b|VISA|MASTER|CARD|CREDIT|DEBIT|PAID|PAYMENT|RECEIVED|BOOST|GRAB|TNG")
#: the tax summary table that follows the total (its `TOTAL` row is the amount before tax)
_SUMMARY = re.compile(r"SUMMARY|GST\s*ANALYSIS|TAX\s*CODE")


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _comma_space(value: str) -> str:
    """`27,JALAN DEDAP 13,` -> `27, JALAN DEDAP 13,`: a space after every comma that lacks one."""
    return re.sub(r",(?=[A-Z(])", ", ", value)


def _add(out: list[str], value: str) -> None:
    value = " ".join(value.split()).strip()
    if value and value not in out:
        out.append(value)


#: what trails or leads a name on its line: a registration number `(519537-X)`, `COMPANY NO(814198-X)`,
#: a store number `#000002`, a trailing comma
_NAME_NOISE_TAIL = re.compile(
    r"[\s,]*(?:\(?(?:CO\.?\s*)?(?:COMPANY\s*)?(?:NO|REG)?[.:\s]*\(?\s*[A-Z]{0,3}\d{4,}[\s-]*[A-Z]?\s*\)[\s,]*)$|[\s,]+$"
)
_NAME_NOISE_HEAD = re.compile(r"^#\d+\s+")
#: lines that cannot be the name: headers, phone and tax lines (but `CASH & CARRY` can be a name)
_NOT_NAME = re.compile(r"\b(?:TEL|FAX|PHONE|GST|ROC|REG|INVOICE|RECEIPT|DATE|CASHIER|TABLE|ORDER|THANK|WELCOME|GOODS|"
                       r"SOLD|FEEDBACK|PLEASE|HOURS|FORMERLY|SERVED|SLIP|TERMINAL|POSTED|ORIGINAL|COPY)\b|@|:")


def _clean_name(line: str) -> str:
    return _NAME_NOISE_TAIL.sub("", _NAME_NOISE_HEAD.sub("", line)).strip()


def _company(lines: list[str]) -> tuple[list[str], int]:
    """Candidates for the company and the index of the line the best one ends on."""
    out: list[str] = []
    head = lines[:10]

    def add(value: str) -> None:
        _add(out, _clean_name(value))
        _add(out, value)

    end = 0
    def is_name(line: str, mark: re.Pattern[str]) -> bool:
        name = _clean_name(line)
        return bool(mark.search(name)) and not _NOT_NAME.search(line) and not _ADDRESS_WORD.search(name.replace("CO.", ""))

    marked = [i for i, line in enumerate(lines[:15]) if is_name(line, _LEGAL_SUFFIX)]
    marked = marked or [i for i, line in enumerate(head) if is_name(line, _COMPANY_MARK)]
    if marked:
        i = marked[0]
        end = i
        if i > 0 and _CONTINUATION.match(lines[i]):
            add(lines[i - 1] + " " + lines[i])
        add(lines[i])
        if i + 1 < len(lines) and _CONTINUATION.match(lines[i + 1]):
            add(lines[i] + " " + lines[i + 1])
            end = i + 1
        if i > 0 and not _REG_NUMBER.match(lines[i - 1]) and not _NOT_NAME.search(lines[i - 1]):
            add(lines[i - 1] + " " + lines[i])
    names = [i for i, line in enumerate(head) if not _REG_NUMBER.match(line) and not _NOT_NAME.search(line)
             and not _NOT_ADDRESS.search(line) and not _ADDRESS_WORD.search(_clean_name(line)) and re.search(r"[A-Z]{3}", line)]
    for i in names[:2]:
        add(lines[i])
        if i + 1 < len(lines) and i + 1 in names:
            add(lines[i] + " " + lines[i + 1])
    if not marked and names:
        end = names[0]
    return out, end


def _address(lines: list[str], after: int) -> list[str]:
    """The address block: the lines after the company that read as an address, up to the first
    phone, tax or document-header line; candidates are its joins, longest first."""
    out: list[str] = []
    start = None
    for i in range(after + 1, min(len(lines), after + 8)):
        if _ADDRESS_WORD.search(lines[i]) and not _NOT_ADDRESS.search(lines[i]) and not _REG_NUMBER.match(lines[i]):
            start = i
            break
    if start is None:
        return out
    block: list[str] = []
    for line in lines[start:start + 6]:
        if _NOT_ADDRESS.search(line) or _REG_NUMBER.match(line) or _DATE.search(line):
            break
        block.append(line)
    # where a postcode line is followed by more than a state line, the address ends after the state
    post = [j for j, line in enumerate(block) if _POSTCODE.search(line)]
    ends = []
    if post:
        ends.append(min(len(block), post[-1] + 1 + (1 if post[-1] + 1 < len(block) and len(block[post[-1] + 1].split()) <= 4 else 0)))
    ends += [len(block), *(range(len(block) - 1, 0, -1))]
    for n in dict.fromkeys(ends):
        joined = " ".join(block[:n])
        _add(out, joined)
        _add(out, _comma_space(joined))
    return out


def _dates(lines: list[str]) -> list[str]:
    keyed: list[str] = []
    rest: list[str] = []
    for line in lines:
        for m in _DATE.finditer(line):
            value = m.group()
            letters = re.findall(r"[A-Z]{3,9}", value)
            if letters and not all(w[:3] in _MONTHS for w in letters):
                continue
            (keyed if re.search(r"DATE|TARIKH|\bDT\b", line) else rest).append(value)
    out: list[str] = []
    for value in keyed + rest:
        _add(out, value)
    return out


def _total(lines: list[str]) -> list[str]:
    """Amounts on total lines (or on the line after a total line that prints none), weighted by how
    many total and payment lines print them and by how late (a rounded or nett total follows the
    first total), then the largest amounts. The amount is given bare, and with the currency prefix
    it is printed with: `$` first (`$8.20`), `RM` after the bare amount (`60.30`, then `RM 60.30`)."""
    scored: dict[str, float] = {}
    printed: dict[str, list[str]] = {}
    n = max(1, len(lines))
    in_summary = False
    for i, line in enumerate(lines):
        found = list(_AMOUNT.finditer(line))
        for m in found:
            printed.setdefault(m.group(2), [])
            if m.group(1):
                printed[m.group(2)].append(m.group(1) + m.group(2))
        in_summary = in_summary or bool(_SUMMARY.search(line))
        if in_summary:
            continue
        kinds = []
        if _TOTAL_WORD.search(line) and not _NOT_TOTAL.search(line):
            kinds.append((found, 3.0))
            if not found and i + 1 < len(lines):
                kinds.append((list(_AMOUNT.finditer(lines[i + 1])), 2.5))
        elif _PAYMENT.search(line) and not _NOT_TOTAL.search(line):
            kinds.append((found, 1.0))
        for ms, weight in kinds:
            for m in ms:
                amt = m.group(2)
                if amt.startswith("-") or float(amt.replace(",", "")) == 0:
                    continue
                scored[amt] = scored.get(amt, 0.0) + weight + i / (10 * n)
    amounts = [a for a in printed if not a.startswith("-")]
    for amt in sorted(amounts, key=lambda a: -float(a.replace(",", "")))[:3]:
        scored.setdefault(amt, 0.5 - len(scored) * 0.01)
    out: list[str] = []
    for amt in sorted(scored, key=lambda a: -scored[a]):
        dollars = [v for v in printed.get(amt, []) if v.startswith("$")]
        for value in [*dollars, amt, *printed.get(amt, [])]:
            _add(out, value)
    return out


def _as_printed(value: str, printed: str) -> str:
    """`value` (found on the upper-cased lines) in the case the document prints it, lines joined by a space."""
    pattern = r"\s+".join(re.escape(part) for part in value.split(" "))
    m = re.search(pattern, printed, re.IGNORECASE)
    return " ".join(m.group().split()) if m else value


#: a line with an amount that is no item: totals, payment, tax, change, rounding, card slips' amount
_NOT_ITEM = re.compile(r"TOTAL|JUMLAH|AMOUNT|AMT\b|\bDUE\b|PAYABLE|NETT|\bNET\b|BALANCE|CHANGE|ROUNDING|ROUND\b|"
                       r"\bTAX|\bGST|\bSST|\bVAT|TENDER|DISCOUNT|AUTH|APPROV|\bCASH\b|VISA|MASTERCARD|CARD\s*PAYMENT|"
                       r"CREDIT|DEBIT|\bPAID\b|PAYMENT|RECEIVED")
#: any amount, not only `_AMOUNT`'s two-decimal ringgit: a slip's "13.50", an Indonesian "4.000";
#: a date such as "24.05.2022" is none
_ANY_AMOUNT = re.compile(r"(?<![\d.,])\d{1,3}(?:[,.]\d{3})*[.,]\d{2,3}(?!\d|[.,/:-]\d)")


def _prints_items(lines: list[str]) -> bool:
    """Whether any line can be an item: one printing an amount that is not a total, payment,
    tax or change line (a card slip prints only "AMOUNT 13.00" and "Total 13.00")."""
    return any(_ANY_AMOUNT.search(line) and not _NOT_ITEM.search(line) for line in lines)


def receipt_candidates(text: str) -> dict[str, Sequence[str | None]]:
    """Per field, the candidate values for that field in `text`, best first (empty where none);
    values in the case the document prints them."""
    lines = _lines(text.upper())
    printed = "\n".join(_lines(text))
    company, end = _company(lines)
    found: dict[str, Sequence[str | None]] = {
        "company": company[:6],
        "address": _address(lines, end)[:8],
        "date": _dates(lines)[:4],
        "total": _total(lines)[:6],
    }
    if not _prints_items(lines):  # a card slip: no item can be read, so none is invented
        found["items"] = [None]
    if printed.upper() == printed:
        return found
    return {field: list(dict.fromkeys(None if v is None else _as_printed(v, printed) for v in values))
            for field, values in found.items()}
