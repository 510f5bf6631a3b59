# ruff: noqa: RUF001 - the rules read texts in several languages and their punctuation
"""Candidates for a plain model's fields, from what their names say they hold.

A `Contract` declares where its fields sit (`Contract.field_candidates`); a plain Pydantic model
declares nothing, and SmolLM2-135M filled `Contact(name, company, phone)` as a new user would not
expect: "Call Jenna Ortiz at Fabrikam on 555-0101" gave `name='Fabrikam', company='Fabrikam'`,
and a text with no number gave the phone `123-456-7890`. `inferred_candidates(strict_schema)`
reads a model's top-level property names once and returns candidate rules for the fields whose
names say what they hold, or None where no name does:

- a person's name: `full_name`, `person_name`, `contact_name` ..., and `name` where the object is
  about a person (its title says so, or a company or an age sits beside it): `person_rules`'
  names, companies left out;
- a company: `company`, `company_name`, `organization`, `employer`, `business`, `firm` ... (below);
- an e-mail address: `email`, `e_mail`, `email_address`: the addresses the text prints;
- a phone number: `phone`, `telephone`, `mobile_number` ... (`decoding.is_phone_field`): the
  phone-shaped runs the text prints;
- an age, a city: `age`; `city`, `town`, `home_city`: `person_rules`'.

A company is, strongest rule first: a labelled value (`Company: ...`, `Empresa: ...`), a run of
capitalised words ending in a company word (`Inc.`, `GmbH`, `Corporation`, `Traders` ...), a
capitalised run after `at`, `from`, `with`, `works for`, `en`, `bei` ... that is not the person's
name, or last, a letterhead's line written in capitals (a receipt's first lines). Every kind
offers `null` where its rules find nothing (the field then can only be `null`, if the model allows
it: nothing is invented), and a company or an age or a city offers it beside the values too.

The pipeline offers these candidates (`candidates.offer_candidates`) under plain decoding too,
unless a call chooses `grounded_decoding` itself: the other fields stay free text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from extractor.contracts.contract import Task
from extractor.grounding import person_rules
from extractor.grounding.decoding import is_phone_field, phone_spans

#: a task's candidate rules: the document -> ordered candidate values per top-level field
Rules = Callable[[str], Mapping[str, Sequence[object]]]

_PERSON_NAME = frozenset({"full_name", "person_name", "contact_name", "contact_person", "customer_name",
                          "employee_name", "patient_name", "applicant_name", "student_name", "member_name"})
_COMPANY = frozenset({"company", "company_name", "organization", "organisation", "organization_name",
                      "organisation_name", "employer", "business", "business_name", "firm", "org", "employer_name"})
_EMAIL = frozenset({"email", "e_mail", "email_address", "mail"})
_CITY = frozenset({"city", "town", "home_city", "city_name"})
_AGE = frozenset({"age"})
#: titles of objects whose `name` is a person's
_PERSON_TITLES = frozenset({"person", "contact", "employee", "customer", "patient", "user", "member", "author",
                            "applicant", "student", "attendee", "speaker", "lead", "candidate", "client",
                            "individual", "people", "guest", "signatory", "sender", "recipient"})

#: words that end a company's name: the long ones in any case (`SDN BHD` on receipts), the short
#: ones as written (`AG`, `Co`: `as` or `co` is a word)
_CORP_WORD = (r"(?:(?i:Inc|Ltd|Limited|LLC|GmbH|plc|Corp|Corporation|Company|Sdn[ \t]+Bhd|Bhd|Group|Holdings|"
              r"Traders|Trading|Technologies|Industries|Enterprises?|Labs|Bank|Partners|Associates|Consulting|"
              r"Solutions|Systems)|AG|SA|S\.A|SAS|Co|BV|B\.V|NV|AB|Oy|SpA|SRL|Pty)\.?")
_WORD = r"[A-Z0-9][\w&'’-]*\.?"
#: a run of capitalised words that ends in a company word (`Globex Corporation`, `Fabrikam Inc.`)
_CORP_RUN = re.compile(rf"(?<![\w&])((?:{_WORD}[ \t]+(?:&[ \t]+)?){{0,3}}{_WORD},?[ \t]+{_CORP_WORD})(?![\w])")
_CORP_END = re.compile(rf"[ \t,]+{_CORP_WORD}$")
#: words before a company's name that say it is one (`at Fabrikam`, `trabajo en Telefónica`)
_COMPANY_CUE = re.compile(r"(?:\b(?:at|from|with|for|joins?|joined|en|bei|chez|für|para|pour|presso|bij)|@)[ \t]+"
                          r"(?=[A-Z])")
_CAP_RUN = re.compile(r"[A-Z][\w&'’-]*(?:[ \t]+(?:&[ \t]+)?[A-Z][\w&'’-]*){0,2}")
_COMPANY_LABELS = frozenset({"company", "company name", "organization", "organisation", "employer", "firm",
                             "business", "empresa", "firma", "société", "entreprise", "unternehmen", "bedrijf",
                             "azienda", "org", "arbeitgeber", "employeur"})
_LABEL = re.compile(r"^\s*([^\W\d][\w ]{0,25}?)\s*[:：]\s*(.+?)\s*$", re.M)
_MAX = 5


def _normal(name: str) -> str:
    """`contactName`, `Contact-Name`, `contact name` -> `contact_name`."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _strip_lead(run: str) -> str:
    """A run without the sentence words before its name (`Call Fabrikam Inc.` -> `Fabrikam Inc.`)."""
    words = run.split()
    while len(words) > 1 and words[0].lower().strip(".,") in person_rules.NOT_NAME \
            and not _CORP_END.search(" " + words[0]):
        words = words[1:]
    return " ".join(words)


#: the first lines of a document a company without a company word may be printed on
_HEADING_LINES = 4


def _is_heading(line: str) -> bool:
    """A line written in capitals, more letters than digits (`BOOK TA .K(TAMAN DAYA) SDN BND`)."""
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 3 and line.upper() == line and len(letters) > sum(c.isdigit() for c in line) \
        and "@" not in line


def _corp_name(text: str, m: re.Match[str]) -> str:
    """The company a company word ends: the run of capitalised words before it, or on a line
    written in capitals its whole line up to it (`MR D.I.Y. (JOHOR) SDN BHD`)."""
    line_start = text.rfind("\n", 0, m.start(1)) + 1
    line_end = text.find("\n", m.end(1))
    line = text[line_start:line_end if line_end >= 0 else len(text)]
    if _is_heading(line):
        return text[line_start:m.end(1)].strip(" \t,")
    return _strip_lead(m.group(1)).rstrip(",")


def company_candidates(text: str, people: Sequence[object] = ()) -> list[object]:
    """The companies `text` names, from the strongest rule that finds any, then None."""
    labelled = [v.strip(" .,;") for label, v in _LABEL.findall(text) if label.strip().lower() in _COMPANY_LABELS]
    suffixed = [_corp_name(text, m) for m in _CORP_RUN.finditer(text)]
    cued = []
    for m in _COMPANY_CUE.finditer(text):
        run = _CAP_RUN.match(text, m.end())
        if run is not None:
            value = run.group(0)
            if value.lower() not in person_rules.NOT_NAME \
                    and not any(value in str(p) or str(p) in value for p in people if p):
                cued.append(value)
    # last: a letterhead's lines written in capitals (a receipt's first lines), where no rule found one
    headings = [ln.strip() for ln in text.splitlines()[:_HEADING_LINES] if _is_heading(ln)]
    headings = [h for h in headings if not any(str(p) in h for p in people if p)]
    for values in (labelled, suffixed, cued, headings):
        found = [v for v in dict.fromkeys(values) if v and not v[0].isdigit()]
        if found:
            return [*found[:_MAX], None]
    return [None]


def _person_names(found: Mapping[str, Sequence[object]], companies: Sequence[object]) -> list[object]:
    names = [n for n in found["name"] if n is not None and not _CORP_END.search(str(n))
             and not any(str(c) in str(n) for c in companies if c)]
    return names or [None]


def _kinds(strict_schema: Mapping[str, Any]) -> dict[str, str]:
    """Top-level property -> its kind, for the properties whose names say what they hold."""
    props = strict_schema.get("properties")
    if strict_schema.get("type") != "object" or not isinstance(props, Mapping):
        return {}
    kinds: dict[str, str] = {}
    names: list[str] = []  # properties called `name`: a person's only where the object is about one
    for prop in props:
        key = _normal(prop)
        if key == "name":
            names.append(prop)
        elif key in _PERSON_NAME:
            kinds[prop] = "name"
        elif key in _COMPANY:
            kinds[prop] = "company"
        elif key in _EMAIL:
            kinds[prop] = "email"
        elif key in _CITY:
            kinds[prop] = "city"
        elif key in _AGE:
            kinds[prop] = "age"
        elif is_phone_field(key):
            kinds[prop] = "phone"
    title = _normal(str(strict_schema.get("title", "")))
    if title in _PERSON_TITLES or any(k in ("company", "age") for k in kinds.values()):
        kinds.update((prop, "name") for prop in names)
    return kinds


def task_rules(task: Task[Any]) -> Rules | None:
    """A task's candidate rules: its contract's own, or a plain model's inferred from its
    property names (computed once per schema), or None."""
    if task.field_candidates is not None or not task.candidates_from_names:
        return task.field_candidates
    return _inferred(task.schema_json)


@functools.lru_cache(maxsize=256)
def _inferred(schema_json: str) -> Rules | None:
    return inferred_candidates(json.loads(schema_json))


def inferred_candidates(strict_schema: Mapping[str, Any]) -> Rules | None:
    """Candidate rules for the fields whose names say what they hold (see the module docstring),
    or None where no property name does."""
    kinds = _kinds(strict_schema)
    if not kinds:
        return None

    def candidates(document: str) -> dict[str, list[object]]:
        found = person_rules.person_candidates(document)
        companies = company_candidates(document, [n for n in found["name"][:1] if n])
        out: dict[str, list[object]] = {}
        for prop, kind in kinds.items():
            if kind == "name":
                out[prop] = _person_names(found, companies)
            elif kind == "company":
                out[prop] = companies
            elif kind == "phone":
                out[prop] = list(phone_spans(document)) or [None]
            else:
                out[prop] = list(found[kind])
        return out

    return candidates
