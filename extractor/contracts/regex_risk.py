"""Regexes that can backtrack catastrophically, found on the parsed pattern (not its text).

A backtracking matcher (Python's `re`, which validates `pattern`) takes exponential time when an
unbounded repetition `(X)+` can split the same text into its iterations in many ways:

- a nested quantifier at the edge of the body: `(a+)+`, `((a+))+`, `(\\w+\\s?)+` (what follows the
  inner `\\w+` may be empty, so `\\w+` of one iteration and `\\w+` of the next share a run);
- overlapping alternation: `(a|aa)+`, `(\\d|\\w)*`: two branches that can start with the same
  character.

`(a+b)+` and `(ba+)+` are safe (every iteration is delimited) and pass. The parse is Python's
own (`re._parser`, the module behind `re.compile`), so the check sees groups, classes and escapes
exactly as the matcher does.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# the parser behind `re.compile` (Python >= 3.11 names; no stubs, hence Any)
sre: Any = importlib.import_module("re._constants")
sre_parse: Any = importlib.import_module("re._parser")

#: characters a first-character set is computed over: ASCII and a few others
_ALPHABET = [chr(c) for c in range(128)] + ["é", "ß", "Ω", "中", "\u00a0", "\u2028"]
_CATEGORY = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
}
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT))
_ALL = frozenset(_ALPHABET)


def _in_class(items: list[tuple[Any, Any]], ch: str) -> bool:
    negate = False
    hit = False
    for op, arg in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            hit = hit or ord(ch) == arg
        elif op is sre.RANGE:
            hit = hit or arg[0] <= ord(ch) <= arg[1]
        elif op is sre.CATEGORY:
            pattern = _CATEGORY.get(arg)
            hit = hit or pattern is None or re.fullmatch(pattern, ch) is not None
    return hit != negate


def _nullable(seq: Any) -> bool:
    return all(_item_nullable(op, arg) for op, arg in seq)


def _item_nullable(op: Any, arg: Any) -> bool:
    if op is sre.AT:
        return True
    if op in _REPEATS:
        return bool(arg[0] == 0 or _nullable(arg[2]))
    if op is sre.SUBPATTERN:
        return _nullable(arg[-1])
    if op is sre.BRANCH:
        return any(_nullable(alt) for alt in arg[1])
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return True
    return False


def _first(seq: Any) -> frozenset[str]:
    """The characters (of `_ALPHABET`) a match of `seq` can start with."""
    out: set[str] = set()
    for op, arg in seq:
        out |= _item_first(op, arg)
        if not _item_nullable(op, arg):
            break
    return frozenset(out)


def _item_first(op: Any, arg: Any) -> frozenset[str]:
    if op is sre.LITERAL:
        return frozenset({chr(arg)})
    if op is sre.NOT_LITERAL:
        return _ALL - {chr(arg)}
    if op is sre.ANY:  # without DOTALL (a schema's pattern has no flags), `.` is anything but \n
        return _ALL - {"\n"}
    if op is sre.IN:
        return frozenset(c for c in _ALPHABET if _in_class(arg, c))
    if op in _REPEATS:
        return _first(arg[2])
    if op is sre.SUBPATTERN:
        return _first(arg[-1])
    if op is sre.BRANCH:
        return frozenset().union(*(_first(alt) for alt in arg[1]))
    return frozenset()


def _unbounded(op: Any, arg: Any) -> bool:
    return op in _REPEATS and arg[1] == sre.MAXREPEAT


def _edge_repeat(seq: Any) -> bool:
    """`seq` holds an unbounded repetition with only what can be empty before and after it."""
    items = list(seq)
    for i, (op, arg) in enumerate(items):
        if not (_nullable(items[:i]) and _nullable(items[i + 1:])):
            continue
        if _unbounded(op, arg) and not _nullable(arg[2]):
            return True
        if op is sre.SUBPATTERN and _edge_repeat(arg[-1]):
            return True
        if op is sre.BRANCH and any(_edge_repeat(alt) for alt in arg[1]):
            return True
        if op in _REPEATS and _edge_repeat(arg[2]):
            return True
    return False


def _overlapping_branch(seq: Any) -> bool:
    """`seq` (the body of an unbounded repetition) holds an alternation with an empty branch or
    two branches that can start with the same character. (The parser factors common prefixes
    out first: `a|aa` becomes `a(?:|a)`, `ab|ac` becomes `a(?:b|c)`, which is safe.)"""
    for op, arg in seq:
        if op is sre.SUBPATTERN and _overlapping_branch(arg[-1]):
            return True
        if op is sre.BRANCH:
            alts = list(arg[1])
            if any(_nullable(alt) for alt in alts):
                return True
            for i, a in enumerate(alts):
                for b in alts[i + 1:]:
                    if _branches_overlap(a, b):
                        return True
    return False


def _literal(seq: Any) -> str | None:
    """The text a branch matches when it is a plain string, else None."""
    if all(op is sre.LITERAL for op, _ in seq):
        return "".join(chr(arg) for _, arg in seq)
    return None


def _branches_overlap(a: Any, b: Any) -> bool:
    """Two branches can match the same start: plain strings when one is a prefix of the other
    (`a|aa`; `horns|hindlimbs` part at their second character), other branches when they can
    start with the same character."""
    la, lb = _literal(a), _literal(b)
    if la is not None and lb is not None:
        return la.startswith(lb) or lb.startswith(la)
    return bool(_first(a) & _first(b))


def _variable(op: Any, arg: Any) -> bool:
    """A repetition whose count is not fixed: `x+`, `x*`, `x?`, `x{1,3}`."""
    return op in _REPEATS and arg[0] != arg[1]


def _adjacent_overlap(seq: Any) -> bool:
    """Two repetitions of variable count with only what can be empty between them, and a character
    both can match: `x+x+`, `a?a?`, `\\w+\\s*\\w+` (inside a repetition, each split of the run
    between them is tried: `(a?a?)+b` takes 14 s on 18 characters)."""
    items = list(seq)
    for i, (op, arg) in enumerate(items):
        if not _variable(op, arg):
            continue
        for j in range(i + 1, len(items)):
            op2, arg2 = items[j]
            if _variable(op2, arg2) and _first(arg[2]) & _first(arg2[2]):
                return True
            if not _item_nullable(op2, arg2):
                break
    return False


def _unwrap(seq: Any) -> Any:
    """The content of a body that is one group: `((x+x+))` -> `x+x+`."""
    while len(seq) == 1 and seq[0][0] is sre.SUBPATTERN:
        seq = seq[0][1][-1]
    return seq


def _walk(seq: Any) -> str | None:
    for op, arg in seq:
        if op in _REPEATS:
            body = arg[2]
            if arg[1] == sre.MAXREPEAT or arg[1] > 1:
                if _edge_repeat(body):
                    return "nested quantifier (catastrophic backtracking), e.g. (a+)+"
                if arg[1] == sre.MAXREPEAT and _adjacent_overlap(_unwrap(body)):
                    return "nested quantifier (catastrophic backtracking), e.g. (a+a+)+"
                if arg[1] == sre.MAXREPEAT and _overlapping_branch(body):
                    return "overlapping alternatives under a repetition (catastrophic backtracking), e.g. (a|aa)+"
            found = _walk(body)
        elif op is sre.SUBPATTERN:
            found = _walk(arg[-1])
        elif op is sre.BRANCH:
            found = next((f for alt in arg[1] if (f := _walk(alt)) is not None), None)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            found = _walk(arg[1])
        else:
            found = None
        if found is not None:
            return found
    return None


def backtracking_risk(pattern: str) -> str | None:
    """Why `pattern` can backtrack catastrophically, or None. `re.error` for an invalid one."""
    return _walk(sre_parse.parse(pattern))
