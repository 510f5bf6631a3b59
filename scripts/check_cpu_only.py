"""CI: what installing the project would add holds no CUDA package (`make check-cpu-only`).

Reads pip's dry-run report (`pip install --dry-run --report - .`, after `make torch` put the CPU
build in place) from stdin; prints what would install and exits 1 if any nvidia-*/cuda-* package
(the CUDA runtime, several GB) is among it.

triton is reported but allowed: xgrammar requires it on Linux x86_64 in every release (0.1.x to
0.2.9, `triton; platform_system == "Linux" and platform_machine == "x86_64"`). It is a GPU kernel
compiler (about 290 MB) that the CPU path never imports; pip has no way to leave out a dependency
of a dependency, so it is installed and unused."""

from __future__ import annotations

import json
import sys

CUDA_PREFIXES = ("nvidia-", "cuda-")
ALLOWED_GPU_ONLY = ("triton",)


def main() -> int:
    report = json.load(sys.stdin)
    names = sorted(item["metadata"]["name"].lower() for item in report.get("install", []))
    cuda = [n for n in names if n.startswith(CUDA_PREFIXES)]
    unused = [n for n in names if n in ALLOWED_GPU_ONLY]
    print(f"check-cpu-only: {len(names)} package(s) would install; CUDA packages: {', '.join(cuda) or 'none'}")
    if unused:
        print(f"check-cpu-only: allowed, unused on the CPU: {', '.join(unused)} (required by xgrammar on Linux x86_64)")
    return 1 if cuda else 0


if __name__ == "__main__":
    sys.exit(main())
