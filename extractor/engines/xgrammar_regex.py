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

__all__ = ["counted_optional_groups", "search_pattern", "top_level_branches"]


def top_level_branches(pattern: str) -> list[str]:
    """`pattern` split at its top-level `|` (outside groups and classes, not escaped)."""
    branches, depth, in_class, start, i = [], 0, False, 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            branches.append(pattern[start:i])
            start = i + 1
        i += 1
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
    i, n, in_class = 0, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            lead = 2 if pattern.startswith("^", i + 1) else 1  # `]` first in a class is literal
            if pattern.startswith("]", i + lead):
                out.append(pattern[i:i + lead + 1])
                i += lead + 1
                continue
        elif ch == ")" and pattern.startswith("?", i + 1):
            out.append("){0,1}")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
