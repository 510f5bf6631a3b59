"""Per-field confidence (extractor/confidence.py) and token texts (extractor/engines/detok.py), on hand-made tokens."""

from __future__ import annotations

import math

import pytest

from extractor.engines.base import TokenLogprob
from extractor.engines.detok import byte_pieces, token_pieces
from extractor.grounding.confidence import field_confidence, token_offsets, value_spans

OUT = '{"name":"José Li","age":34,"tags":["a",""],"x":{"y":null,"z":-1.5e3},"ok":true}'


def test_value_spans_cover_each_scalar_strings_inside_their_quotes() -> None:
    spans = value_spans(OUT)
    shown = {path: OUT[a:b] for path, (a, b) in spans.items()}
    assert shown == {"name": "José Li", "age": "34", "tags[0]": "a", "tags[1]": '""', "x.y": "null",
                     "x.z": "-1.5e3", "ok": "true"}


def test_value_spans_with_whitespace_escapes_and_a_cut_output() -> None:
    text = '{ "a" : [ 1 , { "b" : "x\\"y" } ] ,\n "c": "unfinished'
    spans = value_spans(text)
    assert {p: text[a:b] for p, (a, b) in spans.items()} == {"a[0]": "1", "a[1].b": 'x\\"y'}
    assert value_spans("42") == {} and value_spans("not json") == {}


def test_tokens_that_add_up_to_the_text_are_laid_end_to_end() -> None:
    assert token_offsets("abcde", ["ab", "c", "de"]) == [(0, 2), (2, 3), (3, 5)]


def test_tokens_that_do_not_fit_take_the_characters_up_to_the_next_that_does() -> None:
    # "é" reported as two byte tokens, each a replacement character
    text = '"José"'
    offsets = token_offsets(text, ['"', "Jos", "\ufffd", "\ufffd", '"'])
    assert offsets == [(0, 1), (1, 4), (4, 5), (4, 5), (5, 6)]
    # unmatched tokens at the very end take the rest
    assert token_offsets("abc!", ["ab", "?"]) == [(0, 2), (2, 4)]


def test_confidence_is_the_probability_of_the_value_tokens() -> None:
    pieces = ['{"', "name", '":"', "Jos", "\ufffd", "\ufffd", " Li", '","', "age", '":', "34", ',"', "tags", '":["',
              "a", '","', '"],"', "x", '":{"', "y", '":', "null", ',"', "z", '":', "-1", ".5e3", '},"', "ok", '":',
              "true", "}"]
    lp = {"Jos": -0.2, " Li": -0.1, "34": -0.5, "null": -0.05, "-1": -0.3, ".5e3": -0.4, "true": 0.0}
    tokens = [TokenLogprob(p, lp.get(p, -9.0)) for p in pieces]
    conf = field_confidence(OUT, tokens)
    # the two byte tokens of "é" (logprob -9 each, as every structural token here) belong to name
    assert conf["name"] == pytest.approx(math.exp(-0.2 - 9.0 - 9.0 - 0.1))
    assert conf["age"] == pytest.approx(math.exp(-0.5))
    assert conf["x.y"] == pytest.approx(math.exp(-0.05))
    assert conf["x.z"] == pytest.approx(math.exp(-0.7))
    assert conf["ok"] == 1.0
    assert conf["tags[1]"] == pytest.approx(math.exp(-9.0 * 2))  # '","' and '"],"' hold the empty string's quotes
    assert all(0 < p <= 1 for p in conf.values())


def test_no_tokens_no_confidence() -> None:
    assert field_confidence('{"a":1}', []) == {}


def _byte_level_decode(vocab: dict[int, bytes]):  # type: ignore[no-untyped-def]
    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    return decode


def test_token_pieces_give_a_split_character_to_its_last_token() -> None:
    e_acute = "é".encode()
    vocab = {1: b'{"n":"Jos', 2: e_acute[:1], 3: e_acute[1:], 4: b'"}'}
    pieces = token_pieces(_byte_level_decode(vocab), [1, 2, 3, 4])
    assert pieces == ['{"n":"Jos', "", "é", '"}']
    assert "".join(pieces) == '{"n":"José"}'
    # a cut output that ends inside a character keeps its replacement character
    assert token_pieces(_byte_level_decode(vocab), [1, 2]) == ['{"n":"Jos', "\ufffd"]


def test_byte_pieces_decode_each_tokens_bytes_incrementally() -> None:
    e_acute = "é".encode()
    assert byte_pieces([b"Jos", e_acute[:1], e_acute[1:], b"!"]) == ["Jos", "", "é", "!"]
    assert byte_pieces([b"a", e_acute[:1]]) == ["a", "\ufffd"]
    assert byte_pieces([]) == []
