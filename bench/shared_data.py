"""Where the real development data lies (`../shared/data/` next to the repository, as its README
asks): the one place the benchmarks look for it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shared_data(name: str) -> Path:
    """`name` under the shared data folder: `$EXTRACTOR_SHARED_DATA`, else `../shared/data` next to
    the checkout, `shared/data` inside it (a GPU box's copy), or two levels up (a worktree under
    /work/wt/); the first that holds it, else the usual place (for the error message)."""
    bases = [Path(os.environ["EXTRACTOR_SHARED_DATA"])] if os.environ.get("EXTRACTOR_SHARED_DATA") else []
    bases += [ROOT.parent / "shared" / "data", ROOT / "shared" / "data", ROOT.parent.parent / "shared" / "data"]
    for base in bases:
        if (base / name).exists():
            return base / name
    return bases[0] / name
