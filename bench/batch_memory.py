"""`extract batch` in constant memory: peak RSS for 10,000 up to 1,000,000 small documents with a
scripted engine (no model: the figure is the batch machinery's own), and a resume after kill -9.

    python bench/batch_memory.py                     # 10k, 100k, 1M documents
    python bench/batch_memory.py --sizes 10000       # quicker

Each size runs `extract batch person IN -o OUT --engine scripted` in a child process (the
scripted engine is registered in the child only: `BenchEngine` below); its peak RSS is the child's
`ru_maxrss`. Inputs and outputs live in a temporary folder, never in the repository. Writes
bench/results/batch_memory.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extractor.engines.base import Engine, GenerationRequest, GenerationResult  # noqa: E402

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'


class BenchEngine(Engine):
    """Answers every request with one valid person, remembering nothing (a ScriptedEngine keeps
    every request: a million of them would be the memory measured)."""

    name = "scripted"
    model = "bench"

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [GenerationResult(GOOD, "stop", 40, 20) for _ in requests]


def child(argv: list[str]) -> int:
    from extractor.cli.main import main
    from extractor.engines import registry

    registry.ENGINES["scripted"] = "bench.batch_memory:BenchEngine"
    return main(argv)


def write_input(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc-{i:07d}", "text": f"Alice Smith, {20 + i % 60}, lives in Lisbon. #{i}"}))
            f.write("\n")


def run_batch(inp: Path, out: Path, summary: Path, kill_at_bytes: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "batch", "person", str(inp), "-o", str(out), "--engine", "scripted",
           "--no-progress", "--concurrency", "64", "--summary-json", str(summary)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    if kill_at_bytes is not None:  # kill -9 once the output holds that much: midway, not before it starts
        while proc.poll() is None and (not out.exists() or out.stat().st_size < kill_at_bytes):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rc": proc.returncode, "seconds": round(seconds, 1),
            # ru_maxrss of all children so far: the largest child's peak (sizes run smallest first)
            "peak_rss_mb": round(max(peak_kb, before) / 1024, 1), "stderr_tail": err.decode()[-300:]}


def lines_by_id(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with out.open("rb") as f:
        for line in f:
            ident = json.loads(line)["id"]
            counts[ident] = counts.get(ident, 0) + 1
    return counts


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--resume-size", type=int, default=20_000, help="documents of the kill -9 and resume run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume-only", action="store_true",
                    help="only the kill -9 and resume run, into the existing batch_memory.json")
    args = ap.parse_args()
    if args.resume_only:
        args.sizes = []
    runs = []
    with tempfile.TemporaryDirectory(prefix="batch-memory-") as tmp:
        folder = Path(tmp)
        for n in sorted(args.sizes):
            inp, out, summary = folder / f"in-{n}.jsonl", folder / f"out-{n}.jsonl", folder / f"summary-{n}.json"
            write_input(inp, n)
            result = run_batch(inp, out, summary)
            result.update(documents=n, input_mb=round(inp.stat().st_size / 2**20, 1),
                          output_mb=round(out.stat().st_size / 2**20, 1), summary=json.loads(summary.read_text()))
            # a rerun finds every id done, reading the whole output in a stream
            rerun = run_batch(inp, out, summary)
            result["rerun"] = {"rc": rerun["rc"], "seconds": rerun["seconds"], "summary": json.loads(summary.read_text())}
            print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}), flush=True)
            runs.append(result)
            inp.unlink()
            out.unlink()
        n = args.resume_size
        inp, out, summary = folder / "in-resume.jsonl", folder / "out-resume.jsonl", folder / "summary-resume.json"
        write_input(inp, n)
        killed = run_batch(inp, out, summary, kill_at_bytes=n * 250 // 3)
        written = sum(lines_by_id(out).values()) if out.exists() else 0
        resumed = run_batch(inp, out, summary)
        counts = lines_by_id(out)
        resume = {"documents": n, "killed_rc": killed["rc"], "lines_before_resume": written,
                  "resumed_rc": resumed["rc"], "ids": len(counts), "every_id_once": len(counts) == n and
                  set(counts.values()) == {1}}
        print(json.dumps(resume), flush=True)
    if args.resume_only:
        report = json.loads((args.out / "batch_memory.json").read_text())
        report["resume_after_kill_9"] = resume
        (args.out / "batch_memory.json").write_text(json.dumps(report, indent=2) + "\n")
        return 0
    report = {"what": "extract batch person, scripted engine (bench.batch_memory:BenchEngine), concurrency 64",
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "runs": [{k: v for k, v in r.items() if k != "stderr_tail"} for r in runs], "resume_after_kill_9": resume}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["documents"] for r in runs], [r["peak_rss_mb"] for r in runs], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel("peak RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.axhline(300, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title("extract batch: peak RSS by input size (scripted engine)")
        fig.tight_layout()
        fig.savefig(args.out / "batch_memory.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
