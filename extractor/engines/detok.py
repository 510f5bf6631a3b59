"""The text each generated token adds to the output, for attributing logprobs to characters.

Decoding one token at a time is wrong for byte-level vocabularies: a character split over two
tokens decodes as two replacement characters. Decoding growing prefixes and keeping what each
one adds is right: a token that ends inside a character adds nothing, the next one adds the
whole character. Only run when logprobs were asked for (one decode per token).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from typing import Any

from extractor.engines.base import CLOSING_CHARS


def token_pieces(decode: Callable[[list[int]], str], ids: Sequence[int]) -> list[str]:
    """What each of `ids` adds to `decode(ids)`; the pieces join to it when decoding is
    prefix-stable (as byte-level BPE and SentencePiece decoders are)."""
    pieces: list[str] = []
    done = ""
    for k in range(1, len(ids) + 1):
        text = decode(list(ids[:k]))
        if text.endswith("\ufffd") and k < len(ids):  # inside a character: wait for its last byte
            pieces.append("")
            continue
        common = len(done) if text.startswith(done) else _common_prefix(done, text)
        pieces.append(text[common:])
        done = text
    return pieces


def byte_pieces(chunks: Sequence[bytes]) -> list[str]:
    """Token texts from each token's UTF-8 bytes (as the OpenAI API's `logprobs[].bytes`)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = [decoder.decode(chunk) for chunk in chunks]
    if pieces:
        pieces[-1] += decoder.decode(b"", final=True)
    return pieces


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def closing_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens that hold a character closing a JSON value (`CLOSING_CHARS`): an engine
    that streams decodes its text so far only after one of them (`TextStreaming`). ASCII
    punctuation is written as itself in byte-level BPE and SentencePiece vocabularies alike."""
    return frozenset(i for token, i in tokenizer.get_vocab().items() if any(c in token for c in CLOSING_CHARS))


class GrowingText:
    """A streaming request's output text as its tokens come (`TextStreaming`): decoded only after
    a token that may close a JSON value (`closing_token_ids`), and then only the tokens since the
    last piece decoded, so a long output costs one decode of each token, not of every prefix. Its
    pieces start where a closing token (ASCII) ended, on a character boundary, so they join to
    what decoding the whole output gives for byte-level BPE and SentencePiece vocabularies."""

    def __init__(self, decode: Callable[[list[int]], str], closing_ids: frozenset[int]) -> None:
        self.decode, self.closing_ids = decode, closing_ids
        self.text = ""
        self.decoded = 0  # tokens in `text`
        self.seen = 0  # tokens looked at

    def update(self, ids: Sequence[int]) -> str | None:
        """The text so far when a token since the last call may close a value, else None."""
        new = ids[self.seen:]
        self.seen = len(ids)
        if not any(i in self.closing_ids for i in new):
            return None
        piece = self.decode(list(ids[self.decoded:]))
        if piece.endswith("\ufffd"):  # ends inside a character: wait for its last byte
            return None
        self.text += piece
        self.decoded = len(ids)
        return self.text
