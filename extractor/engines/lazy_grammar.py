"""Per-document grammars in the local engine: llguidance, built lazily, instead of xgrammar.

Grounded decoding sends a new schema for every document (`extractor.grounding.decoding`): the
document's spans as a regex, its amounts and dates as enums. xgrammar compiles a schema ahead,
token masks over the whole vocabulary for every state: 1 to 3 s for a 1,000-character invoice on
one CPU thread, 9 s for a 5,000-character one (`bench/grounding_cost.py`). llguidance builds its
lexer's states as decoding reaches them, so the same schema is ready in 5 to 80 ms from 1,000 to
20,000 characters, and each token's mask then costs about as much as xgrammar's.

`LazyGrammars.compile(schema_json)` parses the schema and builds one matcher (what costs the
time), a `LazyTemplate`; `template.start()` gives each request its own copy (`LLMatcher.deep_copy`,
microseconds), a `LazyMatcher`, which the engine's decoding loop drives exactly like an xgrammar
`GrammarMatcher` (`fill_next_token_bitmask`, `accept_token`, `is_terminated`): both write the
same int32 bitmask layout. The task's own schemas stay on xgrammar (compiled once, cached).

Which schemas: those holding the document's spans (`$defs.DocumentSpan`, `is_per_document`), the
one rule both the engine and the benchmarks read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch

from extractor.engines.base import DOCUMENT_SPAN_DEF, LLGUIDANCE_COMPACT_JSON
from extractor.errors import SchemaRejected

log = logging.getLogger(__name__)

__all__ = ["LazyGrammars", "LazyMatcher", "LazyTemplate", "is_per_document"]


def is_per_document(schema: Mapping[str, Any]) -> bool:
    """Whether `schema` is grounded decoding's per-document schema (compiled lazily)."""
    defs = schema.get("$defs")
    return isinstance(defs, Mapping) and DOCUMENT_SPAN_DEF in defs


class LazyMatcher:
    """One request's llguidance matcher behind xgrammar's `GrammarMatcher` interface."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher
        self._ended = False
        #: llguidance stopped this row mid-decoding (its finish reason is then "grammar")
        self.failed = False

    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0) -> None:
        llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, index)

    def accept_token(self, token: int) -> bool:
        # llguidance stops as soon as the JSON is complete, where xgrammar waits for the stop token:
        # a token taken once it has stopped is that stop token, and ends the request as xgrammar's
        complete = bool(self._matcher.is_stopped())
        if self._matcher.is_error() or not self._matcher.consume_token(token):
            # past one of llguidance's limits mid-decoding (it never raises: its mask then allows
            # only the stop token): this row ends, its JSON incomplete, and the pipeline retries
            # it under the task's own schema; the engine's other rows go on (a token refused
            # would fail the whole batch)
            log.warning("llguidance stopped a per-document grammar: %s", self._matcher.get_error()[:300])
            self._ended = self.failed = True
            return True
        self._ended = complete
        return True

    def is_terminated(self) -> bool:
        """Whether the stop token after the complete JSON has been taken (xgrammar's meaning)."""
        return self._ended


@dataclass(frozen=True)
class LazyTemplate:
    """A matcher at the start of a schema's grammar, which every request copies."""

    matcher: Any
    #: what the engine's grammar cache counts it as: llguidance does not report its memory, so an
    #: estimate from the schema's size, 64 bytes a byte of JSON (measured: 1.0 MB of resident
    #: memory a template, a 1,000-character invoice's 19 KB schema, after 120 tokens decoded; its
    #: lexer grows with the states decoding reaches)
    size: int

    def start(self) -> LazyMatcher:
        return LazyMatcher(self.matcher.deep_copy())


class LazyGrammars:
    """Builds llguidance matchers for one Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _ll_tokenizer(self) -> Any:
        """llguidance's tokenizer, made on the first compile: 0.3 s, which an engine that never
        decodes grounded (or keeps xgrammar for it) should not spend at start-up."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self._vocab_size)
            return self._tokenizer

    def compile(self, schema_json: str) -> LazyTemplate:
        """`schema_json`'s template; `SchemaRejected` where llguidance refuses the schema."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, overrides=LLGUIDANCE_COMPACT_JSON)  # type: ignore[arg-type]
        except ValueError as exc:
            raise SchemaRejected("$", f"llguidance cannot compile the schema: {exc}"[:500]) from exc
        matcher = llguidance.LLMatcher(self._ll_tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise SchemaRejected("$", f"llguidance cannot compile the schema: {matcher.get_error()}"[:500])
        return LazyTemplate(matcher, 64 * len(schema_json))
