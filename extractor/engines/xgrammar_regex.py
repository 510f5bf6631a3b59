"""A JSON Schema `pattern` in the form xgrammar's regex compiler takes.

Two rewrites, each keeping the set of strings the pattern means:

- `search_pattern`: JSON Schema's `pattern` is a search (it may match anywhere unless anchored);
  xgrammar matches the whole string. Each top-level branch's missing `^` or `$` becomes `.*`.
- `counted_optional_groups`: xgrammar (0.2.7, the version vLLM 0.26 ships, and 0.2.9) accepts
  strings outside a group made optional with `?` when the group ends in a repetition:
  `^c(ab*)?$` accepts `cb`, and the `base_path` pattern of 12 real-world schemas,
  `^/((X)+(/(X)*)*)?$`, accepts `//www.gov.uk/...`, which the user's schema then refuses.
  The same group counted as `{0,1}` compiles right, so every `)?` becomes `){0,1}`.
  Of 1,200 random small patterns checked against Python's `re` on every string of up to four
  letters (`bench/xgrammar_regex.py`), xgrammar 0.2.9 read 24 wrong as written, 2 rewritten
  (0.2.7: 25 and 3; the rest an alternation whose branches share a prefix, `(b{0,2}|b)`
  accepting `bbb`, left to validation after decoding). The rewrite changes 42 of the 513 patterns of the real-world dev schemas (30
  schemas).

The vLLM engines send patterns with only the second rewrite (`vllm_schema.py`: a whole-string
match is a search match too, so the stricter grammar is still right); the local engine's
xgrammar path gets both (`grammar_backends.adapt`).
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["counted_optional_groups", "search_pattern", "top_level_branches"]


def _atoms(pattern: str) -> Iterator[tuple[int, str]]:
    """`pattern`'s atoms with where each starts: an escape (`\\x`), a whole character class
    (`[...]`, where a `]` first in the class is literal: `[]?]`, `[^]a]`), or one character. The
    one reading of a pattern's text both rewrites share."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "\\":
            end = i + 2
        elif pattern[i] == "[":
            end = i + (2 if pattern.startswith("^", i + 1) else 1)
            end += pattern.startswith("]", end)
            while end < n and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            end += 1
        else:
            end = i + 1
        yield i, pattern[i:end]
        i = end


def top_level_branches(pattern: str) -> list[str]:
    """`pattern` split at its top-level `|` (outside groups and classes, not escaped)."""
    branches, depth, start = [], 0, 0
    for i, atom in _atoms(pattern):
        if atom == "(":
            depth += 1
        elif atom == ")":
            depth -= 1
        elif atom == "|" and depth == 0:
            branches.append(pattern[start:i])
            start = i + 1
    branches.append(pattern[start:])
    return branches


def _ends_anchored(branch: str) -> bool:
    if not branch.endswith("$"):
        return False
    slashes = len(branch[:-1]) - len(branch[:-1].rstrip("\\"))
    return slashes % 2 == 0


def search_pattern(pattern: str) -> str:
    """A JSON Schema `pattern` (a search: it may match anywhere unless anchored) as the
    whole-string regex xgrammar takes: each top-level branch's missing `^` or `$` becomes `.*`."""
    out = []
    for branch in top_level_branches(pattern):
        start, end = branch.startswith("^"), _ends_anchored(branch)
        core = branch[1 if start else 0:len(branch) - 1 if end and len(branch) > start else len(branch)]
        out.append(("" if start else ".*") + core + ("" if end else ".*"))
    return out[0] if len(out) == 1 else "|".join(f"({b})" for b in out)


def counted_optional_groups(pattern: str) -> str:
    """`pattern` with each group made optional by `?` counted as `{0,1}` instead (the same
    strings; see the module docstring for the xgrammar bug this avoids). Escapes and character
    classes (`[)?]`, `[]?]`) are left as they are."""
    out: list[str] = []
    after_group = False
    for _, atom in _atoms(pattern):
        out.append("{0,1}" if after_group and atom == "?" else atom)
        after_group = atom == ")"
    return "".join(out)
