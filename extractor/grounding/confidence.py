"""Per-field confidence from token logprobs. Pure: the engine's output text and its tokens in,
field path -> probability out.

A field's confidence is the probability the model gave to its value's tokens, one after the
other: exp(sum of their logprobs), in (0, 1]. A value's tokens are those whose characters
overlap it in the output text (for a string, its characters between the quotes; an empty
string, its quotes); a token that also carries JSON punctuation (`":"Alice`) counts for the
value it touches. Every scalar gets one, nulls included (how sure the model was there is no
value). Paths are those of `extractor.grounding.fieldpath` (`name`, `line_items[0].description`).

Token texts need not add up to the output exactly (an engine may report a character split over
two byte tokens as two replacement characters): tokens are laid over the text in order, and a
token that does not fit where it should takes the characters up to the next one that does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from extractor.engines.base import TokenLogprob
from extractor.grounding.fieldpath import Part, field_path

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: how far ahead a token that did not fit may push the next one to find its place
_RESYNC_CHARS = 8


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Field path -> `[start, end)` of each scalar value in a JSON text (strings: inside the
    quotes). Whatever cannot be parsed ends the scan: the spans found so far are returned."""
    out: dict[str, tuple[int, int]] = {}

    def skip(i: int) -> int:
        match = _WS.match(text, i)
        return match.end() if match else i

    def scan(i: int, parts: tuple[Part, ...]) -> int:
        i = skip(i)
        ch = text[i]
        if ch == "{":
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = skip(i)
                if text[i] != '"':
                    raise ValueError("expected a key")
                key, i = _DECODER.raw_decode(text, i)
                i = skip(i)
                if text[i] != ":":
                    raise ValueError("expected ':'")
                i = skip(scan(i + 1, (*parts, str(key))))
                if text[i] == "}":
                    return i + 1
                if text[i] != ",":
                    raise ValueError("expected ',' or '}'")
                i += 1
        if ch == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            index = 0
            while True:
                i = skip(scan(i, (*parts, index)))
                if text[i] == "]":
                    return i + 1
                if text[i] != ",":
                    raise ValueError("expected ',' or ']'")
                i, index = i + 1, index + 1
        _, end = _DECODER.raw_decode(text, i)  # a string, number, true, false or null
        out[field_path(parts)] = (i + 1, end - 1) if ch == '"' and end - 1 > i + 1 else (i, end)
        return end

    try:
        scan(0, ())
    except (ValueError, IndexError):
        pass
    out.pop("", None)  # a bare scalar at the root is no field
    return out


def token_offsets(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """`[start, end)` in `text` of each token, laid over it in order."""
    if "".join(tokens) == text:
        offsets, pos = [], 0
        for token in tokens:
            offsets.append((pos, pos + len(token)))
            pos += len(token)
        return offsets
    offsets = []
    pending: list[int] = []  # tokens that did not fit, waiting for the next one that does
    pos = 0
    for token in tokens:
        at = text.find(token, pos, pos + _RESYNC_CHARS + len(token)) if token else -1
        if at == -1 or (at > pos and not pending):
            pending.append(len(offsets))
            offsets.append((pos, pos))
            continue
        for k in pending:
            offsets[k] = (pos, at)
        pending = []
        offsets.append((at, at + len(token)))
        pos = at + len(token)
    for k in pending:
        offsets[k] = (pos, len(text))
    return offsets


def field_confidence(text: str, tokens: Sequence[TokenLogprob]) -> dict[str, float]:
    """Field path -> exp(sum of the logprobs of the tokens of its value), for each scalar of the
    JSON `text` that some token covers."""
    offsets = token_offsets(text, [t.token for t in tokens])
    out: dict[str, float] = {}
    for path, (start, end) in value_spans(text).items():
        total, covered = 0.0, False
        for (a, b), token in zip(offsets, tokens, strict=True):
            if a < end and b > start:
                total += token.logprob
                covered = True
            elif a >= end:
                break
        if covered:
            out[path] = math.exp(min(total, 0.0))
    return out
