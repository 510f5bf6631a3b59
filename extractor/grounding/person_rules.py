# ruff: noqa: RUF001 - the rules read texts in several languages and their punctuation
"""Candidate values for a person's name, age, city and email, from a short text about them.

`person_candidates(text)` is pure and deterministic: per field, a short ordered list (best first)
meant as the `enum` of that field for grounded decoding, so a small model picks one of a few
plausible values instead of writing one, and a field with no candidate at all is `null` (`[None]`):
the model cannot invent an age or a city the text does not give. Only the values of the strongest
rule that found any are offered (a label beats a cue word, a cue word beats an address, an address
beats a bare place name), with `None` for age and city; an e-mail address the text prints is taken
(SmolLM2-135M chose `null` over the only address of the text in 5 of 40 documents).

Rules are general to how people are written about, in several languages; none names a person:

- **tables** (Markdown pipes, CSV, tab-separated): a header row whose cells name the fields
  (`name`/`full_name`/`Nombre`, `age`/`Alter`, `city`/`Ciudad`, `email`/`E-mail` ...) maps the cells
  of the row below;
- **labels** (`Name:`, `Age: 62`, `Wohnort: Hamburg`, `Edad: 19`, `Ville : Bordeaux` ...);
- **cues**: an age is a number written as one (`34 years old`, `23 y/o`, `aged 90`, `36 Jahre`,
  `29 años`, `(26)` or `, 47,` right after a name, `turned 90`, `40th birthday`, `twenty-eight`);
  a city follows `lives in`, `based in`, `moved to`, `of`, `aus`, `vive en`, `mora em`, `abito a`,
  `habite à`, `woont in` ... or sits in an address (`5013 Bergen`, `Manchester M19 2LL`, `Toronto, ON`);
  a name follows `I'm`, `me llamo`, `ich bin`, `welcome`, `Meet`, `Patient:` ..., or is a line of
  two to four capitalised words (a signature);
- **emails**: every address the text contains, and `null` when it contains none.

Birth dates and years (`born 1990`, `DOB: 04/11/1988`, `(1941-2025)`) are no age: nothing is
computed, only what is printed is offered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["FIELDS", "NOT_NAME", "person_candidates"]

FIELDS = ("name", "age", "city", "email")
_MAX = 5

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)

#: one word of a name: a capitalised word (any script with case), with hyphens and apostrophes
_CAP = r"[^\W\d_][\w'’\-]*"
#: particles written lower-case inside names (`Sanne de Vries`, `Ana da Silva`, `Ludwig van Beethoven`)
_PARTICLES = frozenset({"de", "da", "do", "dos", "das", "del", "della", "di", "du", "van", "von", "der", "den",
                        "ter", "ten", "la", "le", "bin", "binti", "al", "el", "y", "e"})
#: words that start sentences, greetings, headings and roles, never part of a person's name
_NOT_NAME = frozenset(w.lower() for w in (
    "hi hello hey dear thanks thank regards best kind welcome subject re fwd from to cc sent posted reminder "
    "note intake obituary registration membership application form contact card profile speaker résumé resume "
    "curriculum vitae patient client customer parent children child name full nombre completo nom apellido "
    "alter edad âge age city ciudad ville wohnort location email e-mail correo courriel phone tel mobile "
    "senior junior head manager director engineer developer designer lead team university inc ltd llc gmbh plc "
    "ag sa sas bv as co company corp corporation group traders analytics cement hola bonjour hallo ciao olá ola "
    "buenas beste liebe lieber querida querido caro cara mit freundlichen grüßen traueranzeige aufnahmebogen fiche "
    "accueil formulario inscripción rsvp ship happy great-grandad grandad grandma great-grandma quick intro "
    "meet call reach mail ex-alibaba employer emergency referred daughter son sister brother wife husband "
    "in loving memory of presentamos apresento assunto equipe everyone all please join experience "
    "mr mr. mrs mrs. ms ms. dr dr. prof prof. sir madam complainant applicant witness suspect victim firefighter officer nurse "
    "doctor professor captain player host guest superhost household relationship incident class "
    "yes no dietary vegetarian order invoice based i'm im it's its avis décès resident member spotlight born "
    "monday tuesday wednesday thursday friday saturday sunday "
    "january february march april may june july august september october november december".split()))
#: the same words, for other rules that read names (`extractor.grounding.field_kinds`)
NOT_NAME = _NOT_NAME
_NAME = re.compile(rf"{_CAP}(?:\s+(?:(?:{'|'.join(sorted(_PARTICLES))})\s+)?{_CAP}){{1,3}}")

#: label words before a colon, per field (lower-case, as written in forms in several languages)
_LABELS = {
    "name": ("name", "full name", "full_name", "fullname", "nombre", "nombre completo", "nom", "nome", "patient",
             "contact", "client", "customer", "parent", "employee", "applicant", "member", "speaker", "naam",
             "ship to", "attendee", "guest", "student"),
    "age": ("age", "alter", "edad", "âge", "age (years)", "idade", "età", "leeftijd", "years", "umur", "usia"),
    "city": ("city", "home city", "city of residence", "place of residence", "current city", "ciudad", "ville",
             "wohnort", "stadt", "location", "resides", "residence", "town", "cidade",
             "città", "woonplaats", "based in", "home town", "hometown", "lives in"),
    "email": ("email", "e-mail", "mail", "correo", "correo electrónico", "courriel"),
}
_LABEL_LINE = re.compile(r"^\s*([^\W\d][\w ()_\-]{0,30}?)\s*[:：]\s*(.+?)\s*$", re.UNICODE)

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_NUM_WORD = (r"(?:(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](?:one|two|three|four|five|six|seven|eight|nine))?"
             r"|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)")
_AGE_NUM = rf"(\d{{1,3}}|{_NUM_WORD})"
#: what follows a count that is no age (`is 12 kg`, `was 3 days`, `is 40%`)
_NOT_AN_AGE = (r"(?:%|[.,]\d|percent|per\b|kg|g\b|km|m\b|cm|mm|minutes?|mins?|hours?|hrs?|h\b|days?|weeks?|months?|"
               r"items?|units?|times|x\b|euros?|dollars?|pounds?|people|persons|children|kids|pages?|points?|"
               r"years?[ \t]+(?:ago|later|in|at|of|with))")
#: an age printed as one, strongest first: unit words after it, words before it, then bare numbers beside a name
_AGE_CUES = (
    re.compile(rf"\b(?:aged?|age of|âgée?|im alter von|con|turned|turns|edad de|idade de)\s*:?\s*{_AGE_NUM}\b", re.I),
    re.compile(rf"\b{_AGE_NUM}(?:[ \t]*(?:years?[ \t]+old|yrs?\b|y/?o\b|years? of age|jahre\b|jährige|años|anos|ans\b|anni|"
               r"jaar|lat\b|år\b|tahun|yaşında)"
               rf"|-years?-old\b)", re.I),
    re.compile(rf"\b{_AGE_NUM}(?:st|nd|rd|th)\s+birthday", re.I),
    # `I'm 67 and ...`, `tengo 29`, `ho 33 anni` (a count of something else is followed by its noun)
    re.compile(rf"\b(?:I'?m|I am|tengo|tenho|ho|heeft)[ \t]+{_AGE_NUM}\b(?![ \t]*{_NOT_AN_AGE})", re.I),
    re.compile(rf"(?:^|[.!?][ \t]+)at[ \t]+{_AGE_NUM}[ \t]*,", re.I | re.M),
)
#: what comes before the age of something or someone a person has (`he has a 3-year-old husky`, `her 5-year-old son`)
_OWNED = re.compile(r"\b(?:has|have|had|with|owns?|adopted|his|her|their|my|our|your)(?:[ \t]+(?:a|an|two|three|little|new))?[ \t]*$", re.I)
_YEAR_LIKE = re.compile(r"^(?:1[89]|20)\d\d$")


def _after(text: str, literal: str, tail: re.Pattern[str], *, ignore_case: bool = False,
           word_start: bool = False) -> Iterator[re.Match[str]]:
    """The matches of `tail` right after each occurrence of `literal` in `text` (`\\b` before it
    where `word_start`): what `re.finditer(re.escape(literal) + tail.pattern)` finds, without a
    regex compiled per literal (one per name a document evicted this module's own patterns from
    `re`'s cache, and compiling them again was a sixth of the service's CPU a person record)."""
    haystack, needle = text, literal
    if ignore_case:
        haystack, needle = text.lower(), literal.lower()
        if len(haystack) != len(text) or len(needle) != len(literal):  # a letter whose lower case is longer
            yield from re.finditer(re.escape(literal) + tail.pattern, text, tail.flags)
            return
    start = haystack.find(needle)
    while needle and start >= 0:
        if not word_start or _WORD_EDGE.match(text, start):
            m = tail.match(text, start + len(needle))
            if m is not None:
                yield m
                start = haystack.find(needle, max(m.end(), start + 1))
                continue
        start = haystack.find(needle, start + 1)


_WORD_EDGE = re.compile(r"\b")
_HERE = re.compile(r",?[ \t]+(?:here|aquí|aqui|hier|ici|qui)\b")
_AGE_AFTER_NAME = re.compile(rf"[ \t]*(?:\(|,)[ \t]*(?:age[ \t]+)?{_AGE_NUM}[ \t]*(?:\)|,)", re.I)
_RESIDENT = re.compile(r"[ \t]+(?:resident|native|local)\b")
_AFTER_NAME = re.compile(r"(?:\s*,\s*\d{1,3})?\s*[,|]\s*")


def _word_number(token: str) -> int | None:
    token = token.lower().replace(" ", "-")
    if token.isdigit():
        return int(token)
    if token in _NUMBER_WORDS:
        return _NUMBER_WORDS[token]
    tens, _, unit = token.partition("-")
    if tens in _TENS and (not unit or unit in _NUMBER_WORDS):
        return _TENS[tens] + (_NUMBER_WORDS[unit] if unit else 0)
    return None


def _age(token: str) -> int | None:
    value = _word_number(token)
    return value if value is not None and 0 < value <= 120 else None


def _clean(value: str) -> str:
    return " ".join(value.strip(" \t,;.|·-–—\"'()[]").split())


def _is_name(value: str) -> bool:
    words = value.split()
    if not 2 <= len(words) <= 5:
        return False
    caps = [w for w in words if w.lower() not in _PARTICLES]
    if len(caps) < 2 or any(not w[0].isupper() for w in caps):
        return False
    if any(w.lower().strip(".,") in _NOT_NAME for w in caps):
        return False
    if any(w.rstrip(".").isupper() and len(w.rstrip(".")) > 1 for w in caps):  # headings written in capitals
        return False
    return not any(ch.isdigit() or ch in "@/|:" for ch in value)


#: words, and the single spaces between them; anything else (punctuation, a line break) ends a run
_TOKEN = re.compile(r"[^\W\d_]\.(?=[ \t])|[^\W\d_][\w'’\-]*|[ \t]+|.", re.S)


def _cap_runs(text: str, *, max_words: int = 4, first_only: bool = False) -> list[str]:
    """Runs of capitalised words (lower-case particles inside) joined by single spaces, in order."""
    runs: list[list[str]] = []
    current: list[str] = []

    def close() -> None:
        while current and current[-1].lower() in _PARTICLES:
            current.pop()
        if current:
            runs.append(list(current))
        current.clear()

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok.isspace() and "\n" not in tok:
            continue
        if tok[0].isalpha() and tok[0].isupper() and tok.lower() not in _NOT_NAME:
            current.append(tok)
        elif tok[0].isalpha() and current and tok.lower() in _PARTICLES:
            current.append(tok)
        else:
            close()
            if first_only and runs:
                break
    close()
    return [" ".join(r[:max_words]) for r in runs]


def _names_in(text: str) -> list[str]:
    out = []
    for run in _cap_runs(text):
        words = run.split()
        if _is_name(run):
            out.append(run)
        if len(words) >= 3 and _is_name(" ".join(words[1:])):  # `Lifeguard Tomasz Zielinski`: a role first
            out.append(" ".join(words[1:]))
    return out


def _cities_in(value: str) -> list[str]:
    """The place name that `value` starts with (one to three capitalised words), or none."""
    m = re.match(r"\s*", value)
    head = value[m.end() if m else 0:]
    if not head[:1].isupper():
        return []
    runs = _cap_runs(head, max_words=3, first_only=True)
    if not runs or not head.startswith(runs[0].split()[0]):
        return []
    city = _clean(runs[0])
    rest = head[head.find(runs[0].split()[-1]) + len(runs[0].split()[-1]):]
    if _COMPANY_SUFFIX.match(rest):  # `from Acme Ltd`: a company, not a place
        return []
    return [city] if city and not city.isupper() else []


_COMPANY_SUFFIX = re.compile(r"[ \t]*,?[ \t]*(?:Ltd|Limited|Inc|LLC|GmbH|plc|PLC|AG|SA|S\.A\.|Corp|Co\.|BV|B\.V\.|AS|AB|Oy|SpA|SRL|Pty)\b")


_CITY_CUES = re.compile(
    r"(?:\blives?\s+in|\bliving\s+in|\bbased\s+in|\bmoved\s+to|\bresides\s+in|\bresident\s+of|\bhome\s+in|"
    r"\bcoming\s+from|\bfrom\s+her\s+home\s+in|\bfrom\s+his\s+home\s+in|[,)][ \t]*of|\baus|"
    r"\b(?:relocated|moved)\s+from\s+[^,.;\n]{1,40}?\s+to|\brelocated\s+to|\bnow\s+lives\s+in|\bwohnt?\s+(?:seit\s+\d{4}\s+)?in|"
    r"\bwohne\s+(?:seit\s+\d{4}\s+)?in|\bvive\s+en|\bvivo\s+en|\bvive\s+em|\bvivo\s+em|\bmora\s+em|\bmoro\s+em|"
    r"\babito\s+a|\babita\s+a|\bhabite\s+à|\bhabite\s+a|\bwoont\s+in|\bwoon\s+in|\bresidente\s+en|\bdomicilié\s+à|\bdomiciliée\s+à|\bdesde)\s+",
    re.I)
_POSTCODE_CITY = re.compile(r"\b\d{4,5}[ \t]+(\S.*)")
_CITY_UK_POSTCODE = re.compile(r"(?:^|[,|]\s*)([^,|\n]+?)[ \t]+[A-Z]{1,2}\d[A-Z\d]?[ \t]*\d[A-Z]{2}\b", re.M)
_CITY_REGION = re.compile(r"(?:^|[,|·]\s*)([^,|·\n]+?),[ \t]+(?:[A-Z]{2}\b|[A-Z][a-z]+(?:[ \t][A-Z][a-z]+)?[ \t]*$)", re.M)

_HEADER_WORDS = {
    "name": ("name", "full_name", "full name", "fullname", "nombre", "nom", "nome", "naam", "employee", "contact"),
    "age": ("age", "alter", "edad", "âge", "idade", "età", "leeftijd"),
    "city": ("city", "home city", "hometown", "home town", "ciudad", "ville", "stadt", "wohnort", "town", "location", "cidade", "città"),
    "email": ("email", "e-mail", "mail", "correo", "courriel"),
}


def _cells(line: str) -> list[str] | None:
    for sep in ("|", "\t", ",", ";"):
        if line.count(sep) >= (2 if sep == "|" else 1):
            cells = [c.strip() for c in line.strip().strip("|").split(sep)]
            return cells
    return None


def _from_table(lines: list[str]) -> dict[str, list[str]]:
    """Field values from a header row whose cells name the fields and the first data row below it."""
    out: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        header = _cells(line)
        if not header:
            continue
        columns = {field: j for j, cell in enumerate(header) for field, words in _HEADER_WORDS.items()
                   if cell.lower() in words}
        if len(columns) < 2:
            continue
        for row_line in lines[i + 1:]:
            if set(row_line.strip()) <= set("|-: "):
                continue  # the Markdown rule under a header
            row = _cells(row_line)
            if row and len(row) == len(header):
                for field, j in columns.items():
                    if row[j]:
                        out.setdefault(field, []).append(row[j])
            break
    return out


class _Ranked:
    """Candidates per field, each with the strength of the rule that found it (0 strongest)."""

    def __init__(self) -> None:
        self.values: dict[str, list[object]] = {f: [] for f in FIELDS}
        self.tiers: dict[str, list[int]] = {f: [] for f in FIELDS}
        self.tier = 0

    def add(self, field: str, values: Iterable[object]) -> None:
        for v in values:
            if v is not None and v != "" and v not in self.values[field]:
                self.values[field].append(v)
                self.tiers[field].append(self.tier)

    def strongest(self, field: str) -> list[object]:
        """The values found by the strongest rule that found any: a weaker rule's values (the city
        someone grew up in, next to the one they live in) are not offered beside them."""
        if not self.values[field]:
            return []
        best = min(self.tiers[field])
        return [v for v, t in zip(self.values[field], self.tiers[field], strict=True) if t == best]


def person_candidates(text: str) -> dict[str, list[object]]:
    """Ranked candidates per field; a field with none is `[None]` (the text does not give it)."""
    ranked = _Ranked()
    lines = [ln for ln in text.splitlines() if ln.strip()]

    ranked.tier = 0  # tables and form labels
    table = _from_table(lines)
    ranked.add("name", (_clean(v) for v in table.get("name", ()) if _is_name(_clean(v))))
    ranked.add("age", (_age(v) for v in table.get("age", ())))
    ranked.add("city", (c for v in table.get("city", ()) for c in _cities_in(v)[:1]))
    ranked.add("email", (m.group(0) for v in table.get("email", ()) for m in _EMAIL.finditer(v)))

    segments = [seg for line in lines for seg in re.split(r"[|;{}]|,(?=\s*[^\W\d][\w ]{0,20}:)", line)]
    given = family = None
    for segment in segments:
        m = _LABEL_LINE.match(segment.strip().strip('"'))
        if not m:
            continue
        label, value = m.group(1).strip().lower(), m.group(2).strip().strip('"')
        if label in ("surname", "last name", "family name", "apellido", "apellidos", "nachname", "nom de famille"):
            family = value
        elif label in ("first name", "first names", "given name", "given names", "forename", "vorname", "prénom"):
            given = value
        if label in _LABELS["name"]:
            ranked.add("name", _names_in(value)[:1])
        elif label in _LABELS["age"]:
            ranked.add("age", (_age(t) for t in re.findall(rf"^\s*{_AGE_NUM}\b", value, re.I)))
        elif label in _LABELS["city"]:
            ranked.add("city", _cities_in(value)[:1])
    if given and family and _is_name(_clean(f"{given} {family}")):
        ranked.add("name", [_clean(f"{given} {family}")])

    ranked.tier = 1  # words that say what a value is
    # ages written as ages
    for cue in _AGE_CUES:
        ranked.add("age", (_age(m.group(1)) for m in cue.finditer(text) if not _OWNED.search(text[:m.start()])))
    # names, strongest cues first: introductions, then a line that is only a name, then any name
    intro = re.compile(
        r"(?:\bI'?m|\bI am|\bthis is|\bme llamo|\bsoy|\bsou o|\bsou a|\bsono|\bich bin|\bje suis|\bje m'appelle|"
        r"\bwelcome,?|\bwelcoming|\bwelcome to|\bmeet|\bprésente|\bpresentamos a|\bpresento a|\bcolega,|"
        r"\bmaak kennis met|\bposted by|\bcall back|\babschied von|\bmemory of|\bour own|\bneighbour|\bneighbor|"
        r"\bconosco a|\bcomeça conosco a|\bintroducing|\bjoins?|\bsigned|\bcontact:?|\bship to:?|\bit'?s|\bdomicilié)\s+", re.I)
    for m in intro.finditer(text):
        ranked.add("name", _names_in(text[m.end():m.end() + 80])[:1])
    ranked.add("name", (run for run in _names_in(text) if any(_after(text, run, _HERE))))
    ranked.tier = 2
    ranked.add("name", (c for ln in lines for c in [_clean(ln)] if _is_name(c) and len(c.split()) <= 4))
    ranked.tier = 3
    ranked.add("name", _names_in(text))

    ranked.tier = 2
    # weaker: `Ana is 31 and ...`, `They are 46` (whose age it is, the model decides)
    # (after a capitalised word or a pronoun: `my sister is 25` is someone else's age)
    for m in re.finditer(rf"(?:\b[A-Z][\w'’-]*|\b(?:he|she|they|I))[ \t]+(?:is|are|was|tiene|tem|hat)[ \t]+{_AGE_NUM}\b"
                         rf"(?![ \t]*{_NOT_AN_AGE})", text):
        ranked.add("age", [_age(m.group(1))])
    # ages beside a name: `Name (26)`, `Name, 47,` / `Name, 30, based` (a 4-digit year is never one)
    for name in ranked.values["name"][:3]:
        assert isinstance(name, str)
        for m in _after(text, name, _AGE_AFTER_NAME, ignore_case=True):
            ranked.add("age", [_age(m.group(1))])
    ranked.tier = 3
    for m in re.finditer(r"\(\s*(?:age\s+)?(\d{1,3})\s*\)", text, re.I):
        ranked.add("age", [_age(m.group(1))])
    for m in re.finditer(rf",\s*{_AGE_NUM}\s*,", text, re.I):
        ranked.add("age", [_age(m.group(1))])

    ranked.tier = 1
    # cities: cue words, then addresses, then a place right after the name or age (`Kofi Boateng, Kumasi`)
    for m in _CITY_CUES.finditer(text):
        ranked.add("city", _cities_in(text[m.end():m.end() + 60])[:1])
    ranked.tier = 2
    for rx in (_POSTCODE_CITY, _CITY_UK_POSTCODE, _CITY_REGION):
        ranked.add("city", (c for m in rx.finditer(text) for c in _cities_in(m.group(1))[:1]))
    ranked.tier = 1
    ranked.add("city", (run for run in _cap_runs(text, max_words=3)
                        if any(_after(text, run, _RESIDENT, word_start=True))))
    ranked.tier = 3
    for name in ranked.values["name"][:2]:
        assert isinstance(name, str)
        for m in _after(text, name, _AFTER_NAME):
            ranked.add("city", _cities_in(text[m.end():m.end() + 40])[:1])
    for line in lines:
        cells = [c.strip() for c in re.split(r"[|·•]", line)] if len(re.findall(r"[|·•]", line)) >= 1 else []
        for cell in cells:
            if re.fullmatch(rf"{_CAP}(?:\s{_CAP}){{0,2}}", cell) and not cell.isupper() \
                    and cell.lower() not in _NOT_NAME and ":" not in cell:
                ranked.add("city", [cell])

    ranked.tier = 4
    # last, weakest: a place after a preposition (`calling from Nairobi`, `bor i Uppsala`, `tinggal di Surabaya`)
    for m in re.finditer(r"\b(?:in|from|at|i|w|di|em|en|à|a|aus|z|ze|van|uit|till)[ \t]+(?=[^\W\d_])", text):
        ranked.add("city", _cities_in(text[m.end():m.end() + 40])[:1])
    ranked.add("email", (m.group(0).rstrip(".") for m in _EMAIL.finditer(text)))

    # a value is a name or a place, not both: the best name is never a city, and places found as
    # places (`moro em Porto Alegre`) are no names
    top_name = ranked.values["name"][0] if ranked.values["name"] else None
    def keep(field: str, value: object) -> bool:
        if field == "city":
            return value != top_name and not _YEAR_LIKE.match(str(value))
        return value == top_name or value not in ranked.values["city"]

    for field in ("city", "name"):
        pairs = [(v, t) for v, t in zip(ranked.values[field], ranked.tiers[field], strict=True) if keep(field, v)]
        ranked.values[field], ranked.tiers[field] = [v for v, _ in pairs], [t for _, t in pairs]
    out: dict[str, list[object]] = {}
    for field in FIELDS:
        values = ranked.values[field] if field == "email" else ranked.strongest(field)
        if not values:
            out[field] = [None]
        elif field in ("age", "city"):
            out[field] = [*values[:_MAX], None]  # the model may still say the text does not give it
        else:
            out[field] = values[:_MAX]  # a name, and an e-mail address the text prints, are taken
    return out
