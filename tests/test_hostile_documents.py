"""Hostile documents: empty or whitespace, binary or not UTF-8, 10 MB, over the model's context.
Each gets a clear error of its own (a 4xx problem from the service; one line and exit 1 from
`extract run`; a per-item error line from `extract batch`), never a crash or a traceback, and
never an engine call it does not need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extractor import DocumentTooLarge, EmptyDocument, Extractor, ScriptedEngine, UndecodableDocument
from extractor.cli.main import main
from extractor.engines.vllm_http import VllmHttpEngine
from extractor.pipeline.documents import MAX_DOCUMENT_CHARS, check_text, decode_document
from schemas import Person
from tests.fake_openai import fake_openai
from tests.service_support import DOC, answer, call, make_app

PROBLEM = "application/problem+json"
TEN_MB = 10 * 1000 * 1000
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))

#: (case, file bytes, error class, words of its message)
BAD_FILES: list[tuple[str, bytes, type[Exception], str]] = [
    ("empty", b"", EmptyDocument, "the document is empty"),
    ("whitespace", b"  \n\t \r\n ", EmptyDocument, "the document is empty"),
    ("binary (a PNG)", PNG, UndecodableDocument, "not UTF-8 text (byte 0)"),
    ("latin-1, not UTF-8", "Ana Lopes, 41, vive em Évora".encode("latin-1"), UndecodableDocument, "not UTF-8 text"),
    ("UTF-16 with a BOM", "Alice Smith, 34".encode("utf-16"), UndecodableDocument, "not UTF-8 text (byte 0)"),
    ("UTF-16 without a BOM", "Alice Smith, 34".encode("utf-16-le"), UndecodableDocument, "NUL characters"),
    ("NUL bytes in text", b"Alice Smith\x00\x00\x00 is 34", UndecodableDocument, "NUL characters"),
    ("an encoded surrogate", b"Alice \xed\xa0\x80 Smith", UndecodableDocument, "not UTF-8 text"),
    ("10 MB", b"Alice Smith is 34. " * (TEN_MB // 19), DocumentTooLarge, "the limit is 200000 characters"),
    ("300,000 characters", b"x" * 300_000, DocumentTooLarge, "300000 characters; the limit is 200000"),
]
IDS = [case for case, *_ in BAD_FILES]


@pytest.mark.parametrize(("case", "raw", "error", "words"), BAD_FILES, ids=IDS)
def test_decoding_refuses_with_the_right_error(case: str, raw: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        decode_document(raw, "doc.txt")


def test_text_checks() -> None:
    assert check_text("Alice Smith, 34") == "Alice Smith, 34"
    with pytest.raises(UndecodableDocument, match="lone surrogate at 6"):
        check_text("Alice \ud800 Smith")
    with pytest.raises(DocumentTooLarge):
        check_text("x" * (MAX_DOCUMENT_CHARS + 1))
    assert check_text("x" * (MAX_DOCUMENT_CHARS + 1), max_chars=None)
    assert decode_document("\ufeffAlice".encode()) == "Alice"  # a BOM is no part of the text


# -- extract run ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "raw", "error", "words"), BAD_FILES, ids=IDS)
def test_extract_run_gives_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
                                               raw: bytes, error: type[Exception], words: str) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_bytes(raw)
    # every document is bad: refused before any engine is created (the default, local, never loads)
    assert main(["run", "person", str(doc)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"extract: {doc}: ") and words in err, err


def test_extract_run_reads_stdin_with_the_same_checks(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(PNG)))
    assert main(["run", "person", "-"]) == 1
    assert capsys.readouterr().err == "extract: -: not UTF-8 text (byte 0)\n"


def test_extract_run_mixes_good_bad_and_over_context_documents(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    good, empty, long = tmp_path / "good.txt", tmp_path / "empty.txt", tmp_path / "long.txt"
    good.write_text(DOC)
    empty.write_text("")
    long.write_text("Alice Smith is 34 and lives in Lisbon. " * 1500)  # 58 kB: within the limit, over the context
    with fake_openai(max_prompt_chars=20_000) as server:  # not chunked (`--chunking off`): refused
        code = main(["run", "person", str(good), str(empty), str(long), "--no-progress", "--chunking", "off",
                     "--engine", "vllm-http",
                     "--engine-option", f"base_url={server.url}", "--engine-option", "backoff_s=0.01"])
    out, err = capsys.readouterr()
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["meta"]["file"], line["data"]["name"]) for line in lines] == [(str(good), "Alice Smith")]
    errors = err.splitlines()
    assert errors[0] == f"extract: {empty}: the document is empty"
    assert errors[1].startswith(f"extract: {long}: ") and "maximum context length" in errors[1]
    assert len(errors) == 2 and "Traceback" not in err
    assert len(server.bodies) == 2  # the good one, and the long one that vLLM refused with a 400


# -- extract batch ----------------------------------------------------------------------------------

BATCH_LINES: list[bytes] = [
    json.dumps({"id": "good1", "text": DOC}).encode(),
    json.dumps({"id": "empty", "text": ""}).encode(),
    json.dumps({"id": "blank", "text": " \n\t "}).encode(),
    json.dumps({"id": "nul", "text": "Alice\u0000Smith"}).encode(),
    b'{"id": "surrogate", "text": "Alice \\ud800 Smith"}',
    b'{"id": "latin1", "text": "Ana Lopes, vive em \xc9vora"}',  # raw bytes that are not UTF-8, inside the JSON
    json.dumps({"id": "huge", "text": "x" * 250_000}).encode(),
    json.dumps({"id": "overctx", "text": "Alice Smith is 34. " * 3000}).encode(),
    json.dumps({"id": "good2", "text": DOC}).encode(),
]
BATCH_ERRORS = {"empty": "empty-document", "blank": "empty-document", "nul": "undecodable-document",
                "surrogate": "undecodable-document", "latin1": "undecodable-document",
                "huge": "document-too-large", "overctx": "document-too-large"}


def test_extract_batch_turns_each_bad_document_into_its_own_error_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\n".join(BATCH_LINES) + b"\n")
    with fake_openai(max_prompt_chars=20_000) as server:
        code = main(["batch", "person", str(src), "-o", str(out), "--no-progress", "--ordered", "--chunking", "off",
                     "--engine", "vllm-http",
                     "--engine-option", f"base_url={server.url}", "--engine-option", "backoff_s=0.01"])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["good1", *BATCH_ERRORS, "good2"]
    assert {line["id"]: line["error"]["type"] for line in lines if "error" in line} == BATCH_ERRORS
    assert [line["data"]["name"] for line in lines if "data" in line] == ["Alice Smith", "Alice Smith"]
    assert "2 ok, 7 failed" in err and "Traceback" not in err
    # the engine saw the two good documents and the one only it could measure (over its context)
    assert len(server.bodies) == 3


def test_a_batch_input_whose_lines_are_not_json_is_one_error_not_a_traceback(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": "a", "text": "x"}\n' + b"[" * 100_000 + b"\n")
    assert main(["batch", "person", str(src), "-o", str(tmp_path / "out.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"extract: {src}:2: not a JSON line") and err.count("\n") == 1


# -- the service -------------------------------------------------------------------------------------

def multipart(name: str, raw: bytes, mime: str = "text/plain") -> dict[str, Any]:
    return {"files": {"file": (name, raw, mime)}}


#: (case, request keyword arguments, status, problem code)
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("json: empty", {"json": {"text": ""}}, 422, "empty-document"),
    ("json: whitespace", {"json": {"text": " \n\t "}}, 422, "empty-document"),
    ("json: NUL", {"json": {"text": "Alice\u0000Smith"}}, 400, "undecodable-document"),
    ("json: lone surrogate", {"content": b'{"text": "Alice \\udfff"}', "headers": {"content-type": "application/json"}},
     400, "undecodable-document"),
    ("json: not UTF-8", {"content": b'{"text": "caf\xe9"}', "headers": {"content-type": "application/json"}},
     400, "malformed-request"),
    ("json: 10 MB", {"json": {"text": "Alice Smith is 34. " * (TEN_MB // 19)}}, 413, "document-too-large"),
    ("json: 11 MB", {"json": {"text": "x" * 11_000_000}}, 413, "document-too-large"),
    ("text: empty", {"content": b"", "headers": {"content-type": "text/plain"}}, 422, "empty-document"),
    ("text: whitespace", {"content": b"\r\n  \t", "headers": {"content-type": "text/plain"}}, 422, "empty-document"),
    ("text: binary", {"content": PNG, "headers": {"content-type": "text/plain"}}, 400, "undecodable-document"),
    ("text: UTF-16", {"content": "Alice Smith, 34".encode("utf-16-le"), "headers": {"content-type": "text/plain"}},
     400, "undecodable-document"),
    ("text: latin-1 without its charset", {"content": "Évora".encode("latin-1"), "headers": {"content-type": "text/plain"}},
     400, "undecodable-document"),
    ("text: 10 MB", {"content": b"Alice Smith is 34. " * (TEN_MB // 19), "headers": {"content-type": "text/plain"}},
     413, "document-too-large"),
    ("multipart: empty file", multipart("a.txt", b""), 422, "empty-document"),
    ("multipart: whitespace", multipart("a.txt", b"   \n"), 422, "empty-document"),
    ("multipart: binary as text", multipart("a.txt", PNG), 400, "undecodable-document"),
    ("multipart: binary as a PNG", multipart("photo.png", PNG, "image/png"), 415, "unsupported-media-type"),
    ("multipart: NUL", multipart("a.txt", b"Alice\x00Smith"), 400, "undecodable-document"),
    ("multipart: 10 MB", multipart("a.txt", b"Alice Smith is 34. " * (TEN_MB // 19)), 413, "document-too-large"),
    ("multipart: empty text field", {"data": {"text": "  "}, "files": {"other": ("x", b"", "text/plain")}},
     422, "empty-document"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_the_service_answers_a_clear_4xx_and_never_calls_the_engine(case: str, kwargs: dict[str, Any], status: int,
                                                                    code: str) -> None:
    engine = ScriptedEngine(answer)
    r = call(make_app(engine), "POST", "/extract/person", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert (body["status"], body["code"]) == (status, code) and body["detail"]
    assert "Traceback" not in r.text
    assert engine.requests == []


def test_the_service_answers_413_for_a_document_over_the_model_context() -> None:
    with fake_openai(max_prompt_chars=20_000) as server:
        engine = VllmHttpEngine(server.url, backoff_s=0.01)
        app = make_app(engine)
        r = call(app, "POST", "/extract/person", json={"text": "Alice Smith is 34. " * 3000,
                                                        "options": {"chunking": "off"}})
        ok = call(app, "POST", "/extract/person", json={"text": DOC})
    assert r.status_code == 413 and r.json()["code"] == "document-too-large"
    assert "maximum context length" in r.json()["detail"]
    assert ok.status_code == 200  # the engine is fine: the document was the problem


@pytest.mark.model
def test_the_local_engine_refuses_documents_over_its_context(local_engine: Any) -> None:
    extractor = Extractor(local_engine, max_retries=0, chunking="off")  # chunked otherwise (extractor.longdoc)
    with pytest.raises(DocumentTooLarge, match="exceeds the model's context of 8192 tokens"):
        extractor.run(Person, "Alice Smith is 34 and lives in Lisbon. " * 2000)  # ~20k tokens
    # 10 MB is refused by its length alone, before the tokenizer spends seconds on it
    with pytest.raises(DocumentTooLarge, match="cannot fit the model's context"):
        extractor.run(Person, "Alice Smith is 34. " * (TEN_MB // 19))
    assert extractor.run(Person, DOC).data.name == "Alice Smith"  # and the engine goes on
