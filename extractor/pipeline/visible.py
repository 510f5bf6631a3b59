"""What the model reads of a document: its text with invisible format characters removed, and
an offset map back to the original.

Invisible characters cost a model dearly and tell it nothing: on SmolLM2, the person fixture
with a BOM between every character took 15x the output tokens and two attempts to give an
invented record, tag characters (ASCII written invisibly, "ASCII smuggling") 16x, zero-width
spaces and word joiners a wrong record (`bench/results/invisible_chars.json`). Every extraction
(`extractor.longdoc.extract_document` and `stream_document`, so the SDK, CLI, batches and the
service alike) runs on `VisibleText.text`: the prompt, grounded decoding's candidate values,
validation, the echo check and the spans all see the visible text, so values come back without
the invisible characters, and each span is mapped back (`VisibleText.span`) to the characters
of the ORIGINAL document it covers, invisible ones inside it included. A span whose original
characters differ from the visible ones is reported `normalized`, never `exact`.

Removed everywhere (they carry no text, only rendering hints or hidden data):

    U+00AD soft hyphen, U+061C Arabic letter mark, U+200B zero-width space,
    U+200E/U+200F left-to-right/right-to-left marks, U+202A-U+202E bidi embeddings and overrides,
    U+2060 word joiner, U+2061-U+2064 invisible operators, U+2066-U+2069 bidi isolates,
    U+206A-U+206F deprecated format characters, U+FEFF BOM / zero-width no-break space,
    U+FFF9-U+FFFB interlinear annotation marks

Kept where they carry meaning, removed elsewhere:

    U+200C ZWNJ, U+200D ZWJ ... kept between two characters that are not ASCII and are letters,
        marks or symbols (`L*`, `M*`, `So`, `Sk`): inside a word of a script that uses them
        (Persian `می‌خواهم`, Indic conjuncts, Arabic shaping) and inside emoji sequences
        (family, flag, profession, skin tones); between Latin letters, digits, spaces or other
        invisible characters they only break words and are removed
    U+E0000-U+E007F tag characters ... kept as an emoji tag sequence (a subdivision flag: U+1F3F4,
        2 to 7 tag letters, U+E007F cancel tag); any other run is hidden text and is removed
    U+FE00-U+FE0F, U+E0100-U+E01EF variation selectors ... one is kept right after a visible
        character (text or emoji presentation, an ideographic variant); a second one in a row
        selects nothing and is removed (runs of them hide data)

Not touched: U+180E Mongolian vowel separator (it shapes Mongolian), U+034F combining grapheme
joiner, line and paragraph separators, every visible character. A document with none of these
characters is returned as is, with no map (the common case costs one regex search).
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field

from extractor.grounding.spans import Span

_ALWAYS = "\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
_JOINERS = "\u200c\u200d"
_TAGS = "\U000e0000-\U000e007f"
_SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"

_CANDIDATE = re.compile(f"[{_ALWAYS}{_JOINERS}{_TAGS}{_SELECTORS}]")
_REMOVED_ALWAYS = re.compile(f"[{_ALWAYS}]")
_IS_JOINER = re.compile(f"[{_JOINERS}]")
_IS_SELECTOR = re.compile(f"[{_SELECTORS}]")
_TAG_RUN = re.compile(f"[{_TAGS}]+")
#: the tag letters of a subdivision flag (`gbeng`, `gbsct`, `uscaus`) and the cancel tag
_FLAG_TAGS = re.compile("[\U000e0020-\U000e007e]{2,7}\U000e007f")
_BLACK_FLAG = "\U0001f3f4"


def _joins(char: str) -> bool:
    """Whether a ZWJ/ZWNJ next to `char` can carry meaning: a letter, mark or symbol beyond ASCII."""
    if char.isascii():
        return False
    category = unicodedata.category(char)
    return category[0] in "LM" or category in ("So", "Sk")


def _removed(text: str) -> list[int]:
    """The indices of `text`'s characters to remove, ascending."""
    removed: list[int] = []
    gone: set[int] = set()
    tag_keep: tuple[int, int] = (-1, -1)  # the kept tag run (a subdivision flag) being walked
    for match in _CANDIDATE.finditer(text):
        i = match.start()
        char = text[i]
        keep = False
        if _REMOVED_ALWAYS.match(char):
            keep = False
        elif _IS_JOINER.match(char):
            before_ok = i > 0 and (i - 1) not in gone and (_joins(text[i - 1]) or bool(_IS_SELECTOR.match(text[i - 1])))
            keep = before_ok and i + 1 < len(text) and _joins(text[i + 1])
        elif _IS_SELECTOR.match(char):
            keep = i > 0 and (i - 1) not in gone and not _CANDIDATE.match(text[i - 1])
        else:  # a tag character: its whole run is decided at its first character
            if not tag_keep[0] <= i < tag_keep[1]:
                run = _TAG_RUN.match(text, i)
                assert run is not None
                flag = i > 0 and text[i - 1] == _BLACK_FLAG and _FLAG_TAGS.fullmatch(run.group(0)) is not None
                tag_keep = (i, run.end()) if flag else (-1, -1)
            keep = tag_keep[0] <= i < tag_keep[1]
        if not keep:
            removed.append(i)
            gone.add(i)
    return removed


@dataclass(frozen=True)
class VisibleText:
    """A document as the model reads it (`text`) and the way back to `original`."""

    original: str
    text: str
    #: for each removed character, in order, the index of the visible character it stood before
    #: (`len(text)` for those at the end): non-decreasing, so a bisect counts those before a position
    _at: array[int] = field(default_factory=lambda: array("q"), repr=False)

    @property
    def removed(self) -> int:
        """How many characters were removed."""
        return len(self._at)

    def start(self, i: int) -> int:
        """The original index of visible character `i` (a span's start)."""
        return i + bisect_right(self._at, i) if self._at else i

    def end(self, i: int) -> int:
        """The original end (exclusive) of a span of visible characters ending (exclusive) at `i`:
        just after the last of them, so removed characters after the span stay outside it."""
        return self.start(i - 1) + 1 if i > 0 and self._at else i

    def span(self, span: Span) -> Span:
        """`span` (offsets into `text`) as offsets into `original`; an exact match that covers removed
        characters is `normalized` there."""
        if not self._at:
            return span
        start, end = self.start(span.start), max(self.start(span.start), self.end(span.end))
        match = "normalized" if span.match == "exact" and end - start != span.end - span.start else span.match
        return Span(start, end, match)

    def spans(self, spans: Mapping[str, list[Span]]) -> dict[str, list[Span]]:
        return {path: [self.span(s) for s in found] for path, found in spans.items()}


def visible_text(document: str) -> VisibleText:
    """`document` with its invisible format characters removed (see the module docstring)."""
    if _CANDIDATE.search(document) is None:
        return VisibleText(document, document)
    removed = _removed(document)
    if not removed:
        return VisibleText(document, document)
    parts = []
    previous = 0
    for i in removed:
        parts.append(document[previous:i])
        previous = i + 1
    parts.append(document[previous:])
    return VisibleText(document, "".join(parts), array("q", (i - k for k, i in enumerate(removed))))
