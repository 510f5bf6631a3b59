"""Labeled documents -> training examples: exactly the prompt an engine sends, and the record it should answer.

The prompt is `build_messages(task, text)` rendered by the model's chat template with the
generation prompt, as the local and vLLM engines render it; the answer is the expected record as
compact JSON (`compact_json`, the engines' JSON layout) followed by the template's end-of-turn
token. Only the answer's tokens carry a loss.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extractor.contracts.contract import Task
from extractor.errors import DocumentError
from extractor.eval.run import LabeledDocument, label_errors
from extractor.pipeline.prompt import build_messages, compact_json

#: labels of the prompt's tokens: no loss
IGNORE = -100


@dataclass(frozen=True)
class TrainingExample:
    id: str
    prompt_ids: list[int]
    answer_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt_ids) + self.answer_ids


def target_record(task: Task[Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The record as a valid output writes it: every property of the strict schema in its order, a
    field the label leaves out as null (SROIE labels have no `items`: the adapter learns null)."""
    if task.model is not None:
        data: dict[str, Any] = task.model.model_validate(expected).model_dump(mode="json")
    else:
        data = dict(expected)
    order = list(task.strict_schema.get("properties", {}))
    return {key: data.get(key) for key in order} if order else data


def answer_text(task: Task[Any], expected: dict[str, Any]) -> str:
    return compact_json(target_record(task, expected))


def render_prompt_ids(tokenizer: Any, task: Task[Any], text: str) -> list[int]:
    """The prompt's token ids, as `LocalEngine` / `VllmEngine` build them."""
    rendered: str = tokenizer.apply_chat_template([dict(m) for m in build_messages(task, text)], tokenize=False,
                                                  add_generation_prompt=True)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """What the chat template writes after an assistant message's content up to its end token."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00"}],
                                          tokenize=False)
    tail = probe.split("\x00", 1)[1]
    eos = tokenizer.eos_token or ""
    end = tail[: tail.index(eos) + len(eos)] if eos and eos in tail else tail.rstrip()
    return list(tokenizer.encode(end, add_special_tokens=False))


def build_examples(tokenizer: Any, task: Task[Any], docs: Sequence[LabeledDocument], *,
                   max_length: int) -> tuple[list[TrainingExample], list[str]]:
    """Examples of the documents that fit `max_length` tokens, and the ids of those that did not."""
    end = end_of_turn_ids(tokenizer)
    examples, skipped = [], []
    for doc in docs:
        prompt = render_prompt_ids(tokenizer, task, doc.text)
        answer = list(tokenizer.encode(answer_text(task, doc.expected), add_special_tokens=False)) + end
        if len(prompt) + len(answer) > max_length:
            skipped.append(doc.id)
            continue
        examples.append(TrainingExample(doc.id, prompt, answer))
    return examples, skipped


def split_documents(docs: Sequence[LabeledDocument], validation: float, seed: int) -> tuple[list[LabeledDocument], list[LabeledDocument]]:
    """(train, validation): a seeded shuffle, `validation` of the documents held out (at least one
    when there are two or more)."""
    order = list(docs)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * validation)
    if validation > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return order[n_val:], order[:n_val]


def read_training_set(path: str | Path, task: Task[Any], *, limit: int | None = None) -> tuple[list[LabeledDocument], list[str]]:
    """Labeled JSONL (`{"id", "text", "expected"}`) for training, and the ids of the rows left out.

    A field the labels leave out is null where the schema allows it (SROIE's receipts have no
    `items`): each `expected` is completed by `target_record`, then checked against the task like a
    model output (`label_errors`). A row whose label still fails (a required field missing) is left
    out, not guessed."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{source}: cannot read: {exc}") from exc
    docs: list[LabeledDocument] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if limit is not None and len(docs) >= limit:
            break
        try:
            row = json.loads(line)
            text, ident = row["text"], str(row.get("id") or n)
            if not isinstance(text, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DocumentError(f"{source}:{n}: not a labeled document ({exc})") from None
        if ident in seen:
            raise DocumentError(f"{source}:{n}: duplicate id {ident!r}")
        seen.add(ident)
        try:
            expected = target_record(task, row["expected"])
        except (ValueError, TypeError, KeyError):
            skipped.append(ident)
            continue
        if label_errors(task, expected, text):
            skipped.append(ident)
            continue
        docs.append(LabeledDocument(ident, text, expected))
    if not docs:
        raise DocumentError(f"{source}: no document with a valid {task.name} label")
    return docs, skipped
