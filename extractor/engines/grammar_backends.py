"""Two grammar backends for prepared schemas: xgrammar and llguidance.

`GrammarBackends` compiles a prepared schema (`schema_prepare.prepare_schema(...).schema`) with
either backend, chooses one per schema (`choose`: the one that enforces more of it, or the other
when one refuses it), and tells without a model whether a JSON text is accepted by a compiled
grammar (`accepts`), which is how grammar conformance is measured.

Each backend gets the schema in the form it handles best (`adapt`): xgrammar refuses valid
values under ``patternProperties`` and ignores ``minLength``/``maxLength`` beside a ``pattern``,
so for it the former is folded into ``additionalProperties`` and both are reported unenforced;
its patterns are rewritten to whole-string regexes its compiler reads right (`xgrammar_regex.py`).

Both use the same tokenizer: a Hugging Face ``tokenizer.json`` (byte-level BPE), by default the
one of SmolLM2 converted by the project's local engine (`find_tokenizer_json`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import llguidance
import xgrammar as xgr

from extractor.contracts.schema_walk import fold_pattern_properties
from extractor.engines.base import LLGUIDANCE_COMPACT_JSON
from extractor.engines.xgrammar_regex import counted_optional_groups, search_pattern

__all__ = [
    "BACKENDS",
    "BackendName",
    "BackendRefused",
    "Compiled",
    "GrammarBackends",
    "adapt",
    "search_pattern",
    "llguidance_error",
    "find_tokenizer_json",
]

BackendName = Literal["xgrammar", "llguidance"]
BACKENDS: Final[tuple[BackendName, ...]] = ("xgrammar", "llguidance")


class BackendRefused(RuntimeError):
    """A backend that cannot compile a schema."""

    def __init__(self, backend: BackendName, message: str) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.message = message


@dataclass(frozen=True)
class Compiled:
    """A grammar compiled by one backend, with what that backend leaves unenforced."""

    backend: BackendName
    #: `xgrammar.CompiledGrammar`, or the llguidance grammar (a JSON string)
    grammar: Any
    compile_ms: float
    #: keywords of the schema this backend's grammar does not enforce (validated after decoding)
    unenforced: frozenset[str]


def find_tokenizer_json() -> Path:
    """The ``tokenizer.json`` of SmolLM2 as the project's local engine converts it (under the
    extractor cache dir, after one `extract run` with the local engine); ``EXTRACTOR_TOKENIZER``
    names another one."""
    env = os.environ.get("EXTRACTOR_TOKENIZER")
    if env:
        return Path(env)
    roots = [Path(os.environ["EXTRACTOR_CACHE_DIR"])] if os.environ.get("EXTRACTOR_CACHE_DIR") else []
    roots.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "extractor")
    for root in roots:
        found = sorted((root / "models").glob("SmolLM2-*/tokenizer.json"))
        if found:
            return found[-1]
    raise FileNotFoundError("no SmolLM2 tokenizer.json under the extractor cache: run "
                            "`extract run person fixtures/person/alice.txt` once, or set EXTRACTOR_TOKENIZER")


def _walk(n: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = [n]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            out.append(x)
            for k, v in x.items():
                if k not in ("enum", "const"):
                    stack.append(v)
        elif isinstance(x, list):
            stack.extend(x)
    return out


def adapt(schema: dict[str, Any], backend: BackendName) -> tuple[dict[str, Any], frozenset[str]]:
    """The schema as `backend` should get it, and the keywords that backend then leaves unenforced."""
    unenforced: set[str] = set()
    if backend == "llguidance":
        return schema, frozenset()
    copy_: dict[str, Any] = json.loads(json.dumps(schema))
    for node in _walk(copy_):
        if isinstance(node.get("pattern"), str):
            node["pattern"] = counted_optional_groups(search_pattern(node["pattern"]))
        if "pattern" in node and ("minLength" in node or "maxLength" in node):
            unenforced.update(k for k in ("minLength", "maxLength") if k in node)
            node.pop("minLength", None)
            node.pop("maxLength", None)
        if "patternProperties" in node:
            fold_pattern_properties(node)
            unenforced.update({"patternProperties", "additionalProperties"})
    return copy_, frozenset(unenforced)


def llguidance_error(schema: dict[str, Any]) -> str | None:
    """Why llguidance cannot compile `schema` (no tokenizer needed), or None when it can."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=LLGUIDANCE_COMPACT_JSON)  # type: ignore[arg-type]
    except ValueError as exc:
        return f"llguidance: {exc}"[:500]
    error = llguidance.LLMatcher.validate_grammar(grammar)
    return f"llguidance: {error}"[:500] if error else None


class GrammarBackends:
    """Compile prepared schemas with xgrammar and llguidance, choose one, and test JSON texts.

    `separators` and `any_whitespace` must match how the engine decodes (the project decodes
    compact JSON: ``(",", ":")`` and no free whitespace).
    """

    def __init__(self, tokenizer_json: str | Path | None = None, *, separators: tuple[str, str] = (",", ":"),
                 any_whitespace: bool = False, max_threads: int = 1,
                 prefer: tuple[BackendName, ...] = BACKENDS) -> None:
        path = Path(tokenizer_json) if tokenizer_json is not None else find_tokenizer_json()
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
        vocab: dict[str, int] = dict(spec["model"]["vocab"])
        for added in spec.get("added_tokens", []):
            vocab[added["content"]] = added["id"]
        size = max(vocab.values()) + 1
        encoded = [""] * size
        for token, index in vocab.items():
            encoded[index] = token
        eos = [t["id"] for t in spec.get("added_tokens", []) if t["content"] in ("<|im_end|>", "<|endoftext|>",
                                                                                  "</s>", "<|eot_id|>")]
        byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self.tokenizer_info = xgr.TokenizerInfo(
            encoded, xgr.VocabType.BYTE_LEVEL if byte_level else xgr.VocabType.RAW, vocab_size=size,
            stop_token_ids=eos or None)
        self.xgr_compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=max_threads, cache_enabled=False)
        self.ll_tokenizer = llguidance.LLTokenizer(text, n_vocab=size, eos_token=eos or None)
        self.separators = separators
        self.any_whitespace = any_whitespace
        self.prefer = prefer

    # -- compiling

    def compile(self, schema: dict[str, Any], backend: BackendName) -> Compiled:
        """Compile `schema` with `backend`, or raise `BackendRefused`."""
        adapted, unenforced = adapt(schema, backend)
        start = time.perf_counter()
        grammar: Any
        if backend == "xgrammar":
            try:
                grammar = self.xgr_compiler.compile_json_schema(
                    json.dumps(adapted), any_whitespace=self.any_whitespace, separators=self.separators,
                    strict_mode=False)
            except Exception as exc:
                raise BackendRefused(backend, str(exc).strip().splitlines()[0][:500]) from exc
        else:
            options = {"whitespace_flexible": self.any_whitespace, "item_separator": self.separators[0],
                       "key_separator": self.separators[1]}
            try:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(adapted, overrides=options)  # type: ignore[arg-type]
            except ValueError as exc:
                raise BackendRefused(backend, str(exc)[:500]) from exc
            # building a matcher checks the grammar with the tokenizer (lexer, regexes, limits)
            matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
            if matcher.is_error():
                raise BackendRefused(backend, matcher.get_error().splitlines()[0][:500])
        return Compiled(backend, grammar, (time.perf_counter() - start) * 1000, unenforced)

    def compile_all(self, schema: dict[str, Any]) -> dict[BackendName, Compiled | BackendRefused]:
        """Each backend's compiled grammar, or its refusal."""
        out: dict[BackendName, Compiled | BackendRefused] = {}
        for backend in BACKENDS:
            try:
                out[backend] = self.compile(schema, backend)
            except BackendRefused as exc:
                out[backend] = exc
        return out

    def choose(self, schema: dict[str, Any],
               compiled: dict[BackendName, Compiled | BackendRefused] | None = None) -> Compiled:
        """The backend for `schema`: among those that compile it, the one that leaves the fewest
        keywords unenforced; ties go to the first of `prefer`. Raises the first `BackendRefused`
        when none compiles it."""
        results = compiled if compiled is not None else self.compile_all(schema)
        ok = [r for r in results.values() if isinstance(r, Compiled)]
        if not ok:
            first = next(iter(results.values()))
            assert isinstance(first, BackendRefused)
            raise first
        return min(ok, key=lambda c: (len(c.unenforced), self.prefer.index(c.backend)))

    # -- testing texts without a model

    def accepts(self, compiled: Compiled, text: str) -> bool:
        """Whether the grammar lets the engine write exactly `text` (then stop)."""
        if compiled.backend == "xgrammar":
            matcher = xgr.GrammarMatcher(compiled.grammar, terminate_without_stop_token=True)
            return bool(matcher.accept_string(text)) and bool(matcher.is_terminated())
        ll = llguidance.LLMatcher(self.ll_tokenizer, compiled.grammar, log_level=0)
        tokens = self.ll_tokenizer.tokenize_str(text)
        return bool(ll.consume_tokens(tokens)) and bool(ll.is_accepting())

    def dumps(self, value: Any) -> str:
        """`value` as the engine writes it (compact, UTF-8 kept)."""
        sep = self.separators
        return json.dumps(value, ensure_ascii=False, separators=(sep[0], sep[1]))
