"""Issue 17, item 9: the smaller holes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from extractor.eval.run import read_dataset
from schemas import Person
from service.auth import hash_key
from tests.service_support import DOC, call, make_app

ROOT = Path(__file__).resolve().parent.parent
SEPARATORS = "a\u2028b\u2029c\u0085d"  # valid raw inside a JSON string; str.splitlines() breaks lines there


def test_jsonl_batches_keep_line_separators_inside_strings() -> None:
    app = make_app()
    body = "\n".join(json.dumps({"id": f"d{i}", "text": f"{DOC} {SEPARATORS}"}, ensure_ascii=False) for i in range(2))
    r = call(app, "POST", "/batches?schema=person", content=body.encode(), headers={"content-type": "application/x-ndjson"})
    assert r.status_code in (200, 201, 202), r.text


def test_eval_datasets_keep_line_separators_inside_strings(tmp_path: Path) -> None:
    from extractor import task_from_model

    path = tmp_path / "dev.jsonl"
    row = {"id": "1", "text": f"{DOC} {SEPARATORS}",
           "expected": {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\r\n", encoding="utf-8")
    (doc,) = read_dataset(path, task_from_model(Person))
    assert SEPARATORS in doc.text


def test_a_charset_whose_codec_fails_otherwise_is_a_400_not_a_500() -> None:
    r = call(make_app(), "POST", "/extract/person", content=b"\xff\xfe-not punycode-\x80",
             headers={"content-type": "text/plain; charset=punycode"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "undecodable-document"


def test_an_unimportable_schemas_module_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "extractor", "--schemas", "../x", "schemas"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("extract: cannot import schema module '../x'")


def test_an_empty_x_api_key_does_not_hide_a_bearer_key_and_utf8_keys_match() -> None:
    app = make_app(api_keys=(hash_key("s3cret"), hash_key("clé-ü")))
    ok = call(app, "GET", "/schemas", headers={"X-API-Key": "", "Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text
    utf8 = call(app, "GET", "/schemas", headers=[(b"x-api-key", "clé-ü".encode())])
    assert utf8.status_code == 200, utf8.text


def test_the_view_refuses_nul_like_every_other_route() -> None:
    r = call(make_app(), "POST", "/view", content=f"schema=person&text={DOC}%00more".encode(),
             headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    assert "undecodable-document" in r.text
