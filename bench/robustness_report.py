"""The robustness figures in one file: runs the robustness test modules (pytest, JUnit XML),
counts the cases tried and passed per area, and adds the last load test's figures
(bench/results/load_test.json, from bench/load_test.py), the overload run with hostile documents
(bench/results/hostile_load.json, from bench/hostile_load.py) and the batch memory figures
(bench/results/batch_memory.json, from bench/batch_memory.py).

    python bench/robustness_report.py              # model-marked tests included
    python bench/robustness_report.py --no-model   # without the real local model

Writes bench/results/robustness.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

AREAS = {
    "hostile schemas": "tests/test_hostile_schemas.py",
    "hostile documents": "tests/test_hostile_documents.py",
    "prompt injection": "tests/test_prompt_injection.py",
    "engine faults": "tests/test_engine_faults.py",
    "fuzzing: compiler, output parser, documents (hypothesis)": "tests/test_fuzz.py",
    "fuzzing: the API (schemathesis)": "tests/test_service_fuzz.py",
    "load driver": "tests/test_load_driver.py",
    "a failed call leaves the SDK usable": "tests/test_extractor_recovery.py",
    "special tokens of the tokenizer": "tests/test_special_tokens.py",
    "compile limits (regexes, grammar time)": "tests/test_compile_limits.py",
    "PDF limits": "tests/test_pdf_limits.py",
    "server limits, cancel on disconnect": "tests/test_server_limits.py",
    "batch reruns in constant memory": "tests/test_batch_cli_resume.py",
    "small fixes, first contact": "tests/test_small_fixes.py",
    "invisible characters (zero-width, bidi, tags)": "tests/test_invisible_chars.py",
    "admission: adaptive slots, waiters refused before their deadline": "tests/test_admission.py",
}


def run_tests(with_model: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               *AREAS.values()]
        if not with_model:
            cmd += ["-m", "not model"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if not junit.exists():
            raise SystemExit(f"pytest wrote no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        tree = ET.parse(junit)
    per_file: dict[str, dict[str, Any]] = defaultdict(lambda: {"tried": 0, "passed": 0, "failed": 0, "skipped": 0,
                                                               "seconds": 0.0, "failures": []})
    for case in tree.iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        stats = per_file[f"tests/{module}.py"]
        stats["tried"] += 1
        stats["seconds"] += float(case.get("time", 0))
        if case.find("skipped") is not None:
            stats["skipped"] += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            stats["failed"] += 1
            stats["failures"].append(case.get("name"))
        else:
            stats["passed"] += 1
    areas = {}
    for area, path in AREAS.items():
        stats = per_file.get(path, {"tried": 0, "passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0, "failures": []})
        areas[area] = {"module": path, **stats, "seconds": round(stats["seconds"], 1)}
    total = {k: sum(a[k] for a in areas.values()) for k in ("tried", "passed", "failed", "skipped")}
    return {"pytest_exit_code": proc.returncode, "model_tests": with_model, "total": total, "areas": areas}


def load_figures() -> dict[str, Any] | None:
    path = RESULTS / "load_test.json"
    if not path.exists():
        return None
    load = json.loads(path.read_text())
    keep = ("date", "duration_s", "seconds", "concurrency", "engine", "startup_s", "requests", "by_status",
            "errors_by_type", "client_errors", "good", "bad", "queue", "rss_mb", "checks", "server_exit_code")
    return {k: load[k] for k in keep if k in load}


def hostile_load_figures() -> dict[str, Any] | None:
    """The overload run with hostile documents (bench/hostile_load.py), without its time series."""
    path = RESULTS / "hostile_load.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    run = {k: v for k, v in report["overload"].items() if k not in ("samples", "healthz_series", "throughput")}
    keep = ("date", "engine", "settings", "loadavg_1m", "overload_factor", "calibration", "server_exit_code")
    return {**{k: report[k] for k in keep if k in report}, "overload": run, "checks": report["checks"]}


def batch_memory_figures() -> dict[str, Any] | None:
    """Peak RSS of `extract batch` by input size and the kill -9 resume (bench/batch_memory.py)."""
    path = RESULTS / "batch_memory.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return {"peak_rss_mb_by_documents": {str(r["documents"]): r["peak_rss_mb"] for r in report["runs"]},
            "resume_after_kill_9": report.get("resume_after_kill_9")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-model", action="store_true", help="leave out the tests that run the real local model")
    parser.add_argument("--out", type=Path, default=RESULTS / "robustness.json")
    args = parser.parse_args(argv)
    tests = run_tests(with_model=not args.no_model)
    report = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "tests": tests, "load": load_figures(), "hostile_overload": hostile_load_figures(),
              "batch_memory": batch_memory_figures()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"total": tests["total"], "areas": {a: f"{s['passed']}/{s['tried']}" for a, s in
                                                         tests["areas"].items()}}, indent=1))
    return 0 if tests["total"]["failed"] == 0 and tests["pytest_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
