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
