"""`extract_dataset` on a local Ray cluster (this machine's CPUs) with the local engine, against
the same engine in process (`Extractor.iter_many`): docs/s on the deterministic person records.

    python bench/ray_person.py [--docs 16 64]     -> bench/results/ray_person.json and .png

Ray's wall time counts everything a dataset run pays: starting the actors and loading one model in
each. A one-document dataset measures that fixed cost (`start_s`); `docs_per_s_after_start` is
docs / (seconds - start_s). The in-process rows are given both ways: cold (build the Extractor,
load the model, then extract) and warm (the model loaded and one document done before the clock
starts). The CPU may be shared: `loadavg` is the 1-minute load before the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.person_records import exact, person_records  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def score(datas: list[dict[str, Any] | None], records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    valid = [d for d in datas if d is not None]
    return {"docs": len(records), "seconds": round(seconds, 2), "docs_per_s": round(len(records) / seconds, 2),
            "valid": len(valid), "exact": sum(d is not None and exact(d, r["expected"]) for d, r in zip(datas, records, strict=True))}


def in_process(records: list[dict[str, Any]], *, warm: bool) -> dict[str, Any]:
    from extractor import Extractor

    start = time.perf_counter()
    extractor = Extractor("local")
    if warm:
        extractor.run("person", records[0]["text"])
        start = time.perf_counter()
    items = list(extractor.iter_many("person", [(r["id"], r["text"]) for r in records], concurrency=len(records)))
    seconds = time.perf_counter() - start
    close = getattr(extractor.engine, "close", None)
    if callable(close):
        close()
    return score([i.extraction.data.model_dump() if i.extraction else None for i in items], records, seconds)


def on_ray(records: list[dict[str, Any]], *, actors: int, cpus_per_actor: float, threads: int) -> dict[str, Any]:
    import ray.data

    from extractor.batch.ray_data import extract_dataset

    start = time.perf_counter()
    ds = ray.data.from_items([{"id": r["id"], "text": r["text"]} for r in records])
    out = extract_dataset(ds, "person", engine="local", engine_options={"threads": threads}, concurrency=actors,
                          num_cpus=cpus_per_actor, batch_size=max(1, len(records) // actors)).take_all()
    seconds = time.perf_counter() - start
    by_id = {row["id"]: json.loads(row["data"]) if row["data"] else None for row in out}
    return score([by_id[r["id"]] for r in records], records, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, nargs="+", default=[16, 64], help="dataset sizes (default 16 64)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import ray
    import ray.data

    cpus = os.cpu_count() or 1
    loadavg = round(os.getloadavg()[0], 2)
    setups = ["in process, cold", "in process, warm", f"ray, 1 actor x {cpus} threads"]
    setups += [f"ray, {cpus} actors x 1 thread"] if cpus > 1 else []
    rows: list[dict[str, Any]] = []
    for n in args.docs:
        records = person_records(n)
        rows += [{"setup": setups[0], **in_process(records, warm=False)}, {"setup": setups[1], **in_process(records, warm=True)}]
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ray_setups = [(setups[2], 1, cpus, cpus)] + ([(setups[3], cpus, 1, 1)] if cpus > 1 else [])
        for setup, actors, cpus_per_actor, threads in ray_setups:
            start_s = on_ray(person_records(actors), actors=actors, cpus_per_actor=cpus_per_actor, threads=threads)["seconds"]
            for n in args.docs:
                row = on_ray(person_records(n), actors=actors, cpus_per_actor=cpus_per_actor, threads=threads)
                rows.append({"setup": setup, **row, "start_s": start_s,
                             "docs_per_s_after_start": round(n / max(row["seconds"] - start_s, 1e-3), 2)})
    finally:
        ray.shutdown()
    result = {"benchmark": "ray_person", "device": f"{platform.processor() or platform.machine()}, {cpus} cores",
              "engine": "local", "model": "SmolLM2-135M-Instruct", "ray": ray.__version__, "loadavg": loadavg, "runs": rows,
              "date": dt.date.today().isoformat()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray_person.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    height = 0.8 / len(args.docs)
    for k, n in enumerate(args.docs):
        speeds = [next(r["docs_per_s"] for r in rows if r["setup"] == s and r["docs"] == n) for s in setups]
        ax.barh([i + k * height for i in range(len(setups))], speeds, height=height, label=f"{n} docs")
    ax.set_yticks([i + height * (len(args.docs) - 1) / 2 for i in range(len(setups))], setups)
    ax.invert_yaxis()
    ax.set_xlabel("docs/s (Ray: actor start and model load included)")
    ax.set_title(f"person records, local engine, {cpus} CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ray_person.png", dpi=120)


if __name__ == "__main__":
    main()
