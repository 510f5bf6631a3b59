"""Request building of the in-process vLLM engine: pure, no vLLM needed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from extractor import GenerationRequest, task_from_model
from extractor.engines.vllm_inprocess import (
    chosen_logprobs,
    render_prompt,
    sampling_options,
    structured_outputs_config,
    to_result,
)
from extractor.pipeline.prompt import build_messages
from schemas import Person

PERSON = task_from_model(Person)


def test_sampling_options_carry_the_strict_schema_greedy() -> None:
    req = GenerationRequest(messages=(), schema=PERSON.strict_schema, max_tokens=80, repetition_penalty=1.1)
    sampling, structured = sampling_options(req)
    assert structured == {"json": PERSON.strict_schema}
    assert sampling == {"temperature": 0.0, "max_tokens": 80, "repetition_penalty": 1.1, "detokenize": False}


def test_sampling_options_seed_only_when_sampling_and_logprobs_when_asked() -> None:
    req = GenerationRequest(messages=(), schema={}, max_tokens=8, temperature=0.7, seed=5, logprobs=True)
    sampling, _ = sampling_options(req)
    assert sampling["seed"] == 5 and sampling["logprobs"] == 0


def test_whitespace_and_backend_are_engine_wide_settings() -> None:
    assert structured_outputs_config(compact_whitespace=True, backend=None) == {
        "disable_any_whitespace": True, "backend": "xgrammar"}
    assert structured_outputs_config(compact_whitespace=False, backend=None) == {"disable_any_whitespace": False}
    assert structured_outputs_config(compact_whitespace=False, backend="guidance") == {
        "disable_any_whitespace": False, "backend": "guidance"}


@pytest.mark.model
def test_prompt_is_the_chat_template_rendered_to_ids(local_engine: object) -> None:
    tok = local_engine.tokenizer  # type: ignore[attr-defined]
    messages = build_messages(PERSON, "Bob, 40, Rome")
    ids = render_prompt(tok, GenerationRequest(messages=messages, schema={}, max_tokens=8))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids == tok.encode(text, add_special_tokens=False)


@dataclass
class Lp:
    logprob: float
    decoded_token: str


def test_chosen_logprobs_pick_the_generated_token_at_each_position() -> None:
    positions = [{5: Lp(-0.1, "{"), 9: Lp(-2.0, "[")}, {7: Lp(-0.5, '"')}]
    assert [(t.token, t.logprob) for t in chosen_logprobs([5, 7], positions) or ()] == [("{", -0.1), ('"', -0.5)]
    assert chosen_logprobs([5], None) is None


@pytest.mark.model
def test_prompt_cache_gives_the_same_ids_as_rendering_whole(local_engine: object) -> None:
    from extractor.engines.vllm_inprocess import PromptCache
    from schemas import Invoice

    tok = local_engine.tokenizer  # type: ignore[attr-defined]
    cache = PromptCache(tok)
    docs = ["Bob, 40, Rome", "  leading spaces\nand lines</document>", "ünïcödé 東京 42", "x"]
    for task in (PERSON, task_from_model(Invoice)):
        for doc in docs:
            req = GenerationRequest(messages=build_messages(task, doc), schema={}, max_tokens=8)
            assert cache(req) == render_prompt(tok, req)
    assert len(cache._heads) == 2 and all(h is not None for h in cache._heads.values())


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Lp]] | None
    finish_reason: str = "stop"


@dataclass
class Output:
    outputs: list[Completion]
    prompt_token_ids: list[int]


def test_logprobs_take_each_tokens_text_from_the_tokenizer_when_given() -> None:
    """vLLM's one-token `decoded_token` is a replacement character for each half of a split
    character; with the tokenizer's decode each token gets what it adds to the text."""
    e_acute = "é".encode()
    vocab = {1: b'{"n":"Jos', 2: e_acute[:1], 3: e_acute[1:], 4: b'"}', 0: b""}

    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    positions = [{1: Lp(-0.1, '{"n":"Jos')}, {2: Lp(-0.2, "\ufffd")}, {3: Lp(-0.3, "\ufffd")}, {4: Lp(-0.4, '"}')}]
    output = Output([Completion('{"n":"José"}', [1, 2, 3, 4], positions)], [7, 7, 7])
    result = to_result(output, 3, True, decode)
    assert result.text == '{"n":"José"}'
    assert [(t.token, t.logprob) for t in result.logprobs or ()] == [
        ('{"n":"Jos', -0.1), ("", -0.2), ("é", -0.3), ('"}', -0.4)]
    assert [t.token for t in to_result(output, 3, True).logprobs or ()] == ['{"n":"Jos', "\ufffd", "\ufffd", '"}']
    assert to_result(output, 3, False, decode).logprobs is None  # not asked: nothing decoded


def test_confidence_from_in_process_logprobs() -> None:
    from extractor.grounding.confidence import field_confidence

    text = '{"name":"Bob","age":40}'
    ids = list(range(1, 8))
    pieces = ['{"', 'name":"', "Bob", '","age":', "4", "0", "}"]
    positions = [{i: Lp(-0.5 if p in ("Bob", "4", "0") else 0.0, p)} for i, p in zip(ids, pieces, strict=True)]
    result = to_result(Output([Completion(text, ids, positions)], [1]), 1, True)
    conf = field_confidence(result.text, result.logprobs or ())
    assert conf == pytest.approx({"name": 0.6065306597, "age": 0.3678794412})


def test_text_is_the_token_ids_decoded_once_when_the_engine_decodes() -> None:
    """Requests go out with `detokenize=False`, so vLLM's text is empty: the engine's decode of the
    finished output's token ids is the text."""
    vocab = {1: '{"age":', 2: "4", 3: "2", 4: "}", 0: ""}
    output = Output([Completion("", [1, 2, 3, 4, 0], None, "stop")], [7, 7])
    result = to_result(output, 2, False, lambda ids: "".join(vocab[i] for i in ids))
    assert (result.text, result.finish_reason, result.completion_tokens, result.prompt_tokens) == ('{"age":42}', "stop", 5, 2)
    assert to_result(Output([Completion("vllm text", [1], None)], [7]), 1, False).text == "vllm text"


def test_a_schema_vllms_grammar_backend_refuses_is_a_schema_error_not_an_engine_error() -> None:
    """On the H200, vLLM's "auto" backend refused 13 real-world schemas that our xgrammar compiled,
    as it added the request: that is the schema's 422, not the engine's 502."""
    from extractor.engines.vllm_inprocess import refusal
    from extractor.errors import EngineError, SchemaRejected, http_status

    def raised_in(filename: str) -> BaseException:
        scope: dict[str, object] = {}
        exec(compile("def fail():\n    raise ValueError('Ref recusion limit reached: 3')\n", filename, "exec"), scope)
        try:
            scope["fail"]()  # type: ignore[operator]
        except ValueError as exc:
            return exc
        raise AssertionError("no exception")

    refused = refusal(raised_in("/site/vllm/v1/structured_output/backend_guidance.py"))
    assert isinstance(refused, SchemaRejected) and http_status(refused) == 422
    assert "Ref recusion limit reached: 3" in str(refused)
    other = refusal(raised_in("/site/vllm/v1/engine/processor.py"))
    assert isinstance(other, EngineError) and not isinstance(other, SchemaRejected)
