"""How often xgrammar's regex compiler reads a pattern wrong, with and without the rewrite of
`extractor/engines/xgrammar_regex.py` (`counted_optional_groups`).

Random small patterns over the letters a, b, c (groups, alternations, `?`, `*`, `+`, `{m,n}`,
classes; seeded) are compiled by xgrammar as a string's `pattern` and checked against Python's `re`
on every string of up to four letters; a pattern is wrong when the two disagree on any of them. The
real-world patterns of `jsonschemabench-dev.jsonl` that the rewrite changes are counted too.

    python bench/xgrammar_regex.py [--patterns 1200] [--seed 2]
        -> bench/results/xgrammar_regex.json and .png
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import xgrammar as xgr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the bench package, run as a script
    sys.path.insert(0, str(ROOT))
from bench.schema_e2e import DATA, RESULTS, load  # noqa: E402
from extractor.engines.xgrammar_regex import counted_optional_groups  # noqa: E402

STRINGS = ["".join(t) for n in range(5) for t in itertools.product("abc", repeat=n)]


def random_pattern(rng: random.Random) -> str:
    def atom(depth: int) -> str:
        r = rng.random()
        if depth > 1 or r < 0.5:
            return rng.choice(["a", "b", "[ab]", "c"])
        if r < 0.7:
            return "(" + seq(depth + 1) + ")"
        return "(" + seq(depth + 1) + "|" + seq(depth + 1) + ")"

    def seq(depth: int) -> str:
        return "".join(atom(depth) + rng.choice(["", "", "", "?", "*", "+", "{0,2}", "{1,2}"])
                       for _ in range(rng.randint(1, 2)))

    return "^" + seq(0) + "$"


def wrong(pattern: str, sent: str) -> list[str]:
    """The strings on which xgrammar, given `sent`, and `re`, given `pattern`, disagree."""
    grammar = xgr.Grammar.from_json_schema(json.dumps({"type": "string", "pattern": sent}))
    return [s for s in STRINGS
            if bool(re.search(pattern, s)) != xgr.testing._is_grammar_accept_string(grammar, json.dumps(s))]


def real_world_patterns(path: Path) -> tuple[int, list[dict[str, str]]]:
    found: list[dict[str, str]] = []
    total = 0
    for row in load(path, None, 0, None):
        stack: list[Any] = [row["schema"]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("pattern"), str):
                    total += 1
                    if counted_optional_groups(node["pattern"]) != node["pattern"]:
                        found.append({"id": row["id"], "pattern": node["pattern"]})
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return total, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.time()
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    for _ in range(args.patterns):
        pattern = random_pattern(rng)
        for kept, sent in ((before, pattern), (after, counted_optional_groups(pattern))):
            bad = wrong(pattern, sent)
            if bad:
                kept.append({"pattern": pattern, "sent": sent, "disagree_on": bad[:5]})
    total, changed = real_world_patterns(DATA)
    result = {
        "benchmark": "xgrammar_regex", "xgrammar": version("xgrammar"),
        "patterns": args.patterns, "seed": args.seed, "strings_per_pattern": len(STRINGS),
        "wrong_as_written": len(before), "wrong_rewritten": len(after),
        "real_world_patterns": total, "real_world_rewritten": len(changed),
        "real_world_schemas_rewritten": len({c["id"] for c in changed}),
        "seconds": round(time.time() - started, 1),
        "wrong_rewritten_examples": after[:20], "wrong_as_written_examples": before[:20],
        "real_world_rewritten_examples": changed[:20],
    }
    out = RESULTS / "xgrammar_regex.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["as written", "optional groups counted"], [len(before), len(after)], color=["#c44", "#4a4"])
    ax.set_ylabel(f"patterns read wrong (of {args.patterns})")
    ax.set_title("xgrammar's regexes against Python's re")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("examples")}))


if __name__ == "__main__":
    main()
