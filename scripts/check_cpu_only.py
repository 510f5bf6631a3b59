"""CI: what installing the project would add holds no CUDA package (`make check-cpu-only`).

Reads pip's dry-run report (`pip install --dry-run --report - .`, after `make torch` put the CPU
build in place) from stdin; prints what would install and exits 1 if any nvidia-*/cuda-* package
or triton is among it."""

from __future__ import annotations

import json
import sys

CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")


def main() -> int:
    report = json.load(sys.stdin)
    names = sorted(item["metadata"]["name"].lower() for item in report.get("install", []))
    cuda = [n for n in names if n.startswith(CUDA_PREFIXES)]
    print(f"check-cpu-only: {len(names)} package(s) would install; CUDA packages: {', '.join(cuda) or 'none'}")
    return 1 if cuda else 0


if __name__ == "__main__":
    sys.exit(main())
