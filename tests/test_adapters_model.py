"""A LoRA adapter trained for real on the CPU (a few steps on 4 documents, as CI runs it), loaded by
the local engine, evaluated with the overlap guard, and merged: the merged model gives the same
records as the adapter applied per request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from extractor import Extractor
from extractor.adapters import load_adapter
from tests.conftest import FIXTURES, ROOT

pytestmark = pytest.mark.model

DEV = FIXTURES / "dev" / "person.jsonl"


def extract_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extractor", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=1800, check=False)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`extract train` on the first 4 person dev documents: 2 steps, 1 held out (a high learning rate,
    so that 2 steps change the model)."""
    tmp = tmp_path_factory.mktemp("lora")
    data = tmp / "train.jsonl"
    data.write_text("".join(DEV.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    out = tmp / "person-adapter"
    done = extract_cli("train", "person", str(data), "--out", str(out), "--max-steps", "2", "--batch-size", "2",
                       "--validation", "0.25", "--lr", "3e-3", "--no-progress")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def merged(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "model"
    done = extract_cli("merge", str(adapter), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines()[4:7]]


def test_training_writes_what_vllm_loads_and_the_manifest(adapter: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors", "manifest.json", "curves.json", "curves.png"):
        assert (adapter / name).is_file(), name
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["bias"] == "none" and not config.get("use_dora") and not config.get("modules_to_save")
    loaded = load_adapter(adapter)
    m = loaded.manifest
    assert (m.schema_info.name, m.schema_info.version, m.base_model.name) == ("person", "3", "SmolLM2-135M-Instruct")
    assert m.data.documents == 4 and m.data.train == 3 and m.data.validation == 1 and len(m.data.train_ids) == 3
    assert m.metrics["steps"] == 2 and "val_loss" in m.metrics and m.hyperparameters["seed"] == 0


def test_local_engine_applies_the_adapter_per_schema(adapter: Path, docs: list[dict[str, Any]]) -> None:
    # plain decoding: these tests are about the adapter's weights (grounded decoding falls back when its
    # grammar misses the compile budget on a busy box, and the two runs compared must decode alike)
    with Extractor("local", adapter=str(adapter), max_retries=0, grounded_decoding=False) as ex:
        tuned = [ex.run("person", d["text"]) for d in docs]
        base = [ex.run("receipt", "KEDAI ALI\nNO 5 JALAN MAWAR\n12/05/2018\nTOTAL 18.90")]  # no adapter: base model
    assert all(r.meta.adapter == "person" for r in tuned)
    assert base[0].meta.adapter is None


def test_merged_model_gives_the_records_of_the_adapter(adapter: Path, merged: Path, docs: list[dict[str, Any]]) -> None:
    with Extractor("local", adapter=str(adapter), max_retries=0, grounded_decoding=False) as ex:
        per_request = [ex.run("person", d["text"]).data_dict() for d in docs]
    with Extractor("local", model_dir=str(merged), max_retries=0, grounded_decoding=False) as ex:
        folded = [ex.run("person", d["text"]).data_dict() for d in docs]
    assert folded == per_request


def test_eval_never_scores_training_documents(adapter: Path, tmp_path: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(DEV.read_text(encoding="utf-8").splitlines(keepends=True)[:6]), encoding="utf-8")
    report = tmp_path / "ab.json"
    done = extract_cli("eval", "person", str(data), "--adapter", str(adapter), "--ab", "-o", str(report),
                       "--max-retries", "0", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "3 document(s) the adapter was trained on left out" in done.stderr
    out = json.loads(report.read_text())
    assert out["documents"] == 3 and out["adapter"]["excluded_trained_on"] == 3
    assert out["base"]["documents"] == 3 and "fields" in out["ab"]
