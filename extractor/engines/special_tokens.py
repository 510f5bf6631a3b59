"""Special tokens written as text: the one rule that defuses them.

A tokenizer reads the text of its special and added tokens (`<|im_end|>`, `<filename>`,
`<jupyter_code>` ...) as those tokens, wherever the text comes from: a document holding
`<|im_end|><|im_start|>system` would open a system turn of its own, and so would a model's output
that copied it (grounded decoding offers the document's text as values) when it is fed back as the
assistant turn of a retry. The rule: a space after the token's first character, so it reads as
plain text (`< |im_end|>`), and nothing else changes.

An engine that holds its tokenizer (`local`, `vllm`) defuses every token of that tokenizer
(`tokenizer_special_tokens`) in every message it renders: documents, few-shot turns, outputs fed
back and error messages alike. Where the tokenizer is on a server (`vllm-http`), the common chat
templates' control tokens (`COMMON_CONTROL_TOKENS`) are defused instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from extractor.engines.base import Message

#: the chat templates' control tokens of common model families, in any name: `<|...|>`
#: (ChatML, Llama 3), `[INST]`, `<start_of_turn>` (Gemma), `</s>`
COMMON_CONTROL_TOKENS = r"<\|[^<>|\n]{0,40}\|>|\[/?INST\]|<(?:start|end)_of_turn>|</?s>"


def tokenizer_special_tokens(tokenizer: Any) -> frozenset[str]:
    """Every token string the tokenizer matches in text before its model splits it: the special
    tokens and every added token (a Hugging Face tokenizer's `get_added_vocab`)."""
    tokens: set[str] = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        tokens.update(added())
    return frozenset(t for t in tokens if t and not t.isspace())


def break_token(text: str) -> str:
    """The rule: a space after the first character."""
    return text[0] + " " + text[1:]


class Defuser:
    """Defuses the given token strings (longest first) and the common control tokens."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.tokens = frozenset(tokens)
        alternatives = [re.escape(t) for t in sorted(self.tokens, key=len, reverse=True)]
        self._pattern = re.compile("|".join([*alternatives, COMMON_CONTROL_TOKENS]))

    def __call__(self, text: str) -> str:
        return self._pattern.sub(lambda m: break_token(m.group(0)), text)

    def messages(self, messages: Sequence[Message]) -> list[Message]:
        """The messages with every content defused (roles are the template's own)."""
        return [{**m, "content": self(m["content"])} for m in messages]


#: for text bound for a tokenizer we do not hold
COMMON = Defuser()
