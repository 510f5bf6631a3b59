"""A 100-page text PDF through the service: one merged record, and the process's peak memory
against the document's size.

    python bench/long_service_rss.py                  -> bench/results/long_service_rss.json and .png

Each size (10, 25, 50, 100 pages of a 40-row invoice table) runs in a fresh child process, which
builds the PDF with pypdf, posts it to `POST /extract/invoice` of an in-process app (httpx ASGI
transport, the service's whole path: upload, PDF text, chunking, the chunks' extraction, merge,
validation) and reports its peak RSS (`ru_maxrss`). The engine is the tests' reading engine
(tests/long_support.py: it reads each chunk with regular expressions, as a perfect model would), so
the figures are the pipeline's own memory and time, not a model's; the model's memory is constant
(its weights and one batch's KV cache, `--engine-option max_batch_size` bounds it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
ROWS_PER_PAGE = 40


def invoice_pdf(pages: int, seed: int = 7) -> tuple[bytes, int, float]:
    """A text PDF of `pages` pages of invoice rows: its bytes, its item count and total."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    rng = random.Random(seed)
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Courier")}))
    total, items = 0.0, 0
    for p in range(pages):
        lines = []
        if p == 0:
            lines += ["Kestrel Industrial Ltd", "INVOICE", "Invoice number: INV-77001", "Invoice date: 14 May 2024",
                      "Currency: EUR", f"Number of items: {pages * ROWS_PER_PAGE}"]
        lines.append(f"{'Description':<34}{'Qty':>6}{'Unit price':>14}{'Amount':>14}")
        for _ in range(ROWS_PER_PAGE):
            q, price = rng.randrange(1, 20), rng.randrange(100, 9000) / 100
            name = f"Part {rng.randrange(10000, 99999)} steel"
            lines.append(f"{name:<34}{q:>6}{price:>14,.2f}{q * price:>14,.2f}")
            total += q * price
            items += 1
        if p == pages - 1:
            lines.append(f"Total due: {total:,.2f} EUR")
        page = writer.add_blank_page(width=612, height=792)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
            {NameObject("/F1"): font})})
        ops = "".join(f"BT /F1 8 Tf 30 {770 - 15 * i} Td ({line}) Tj ET\n" for i, line in enumerate(lines))
        content = DecodedStreamObject()
        content.set_data(ops.encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue(), items, round(total, 2)


def child(pages: int) -> dict[str, Any]:
    import httpx2

    from extractor import ScriptedEngine
    from service import Settings, create_app
    from tests.long_support import reader

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pdf, items, total = invoice_pdf(pages)
    app = create_app(Settings(batch_db=f"sqlite:////tmp/long-rss-{pages}.sqlite3", deadline_s=3600,
                              max_body_bytes=64 * 1024 * 1024, max_document_chars=10_000_000),
                     engine=ScriptedEngine(reader))

    async def go() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t",
                                      timeout=3600) as client:
            return await client.post("/extract/invoice", content=pdf, headers={"Content-Type": "application/pdf"})

    started = time.perf_counter()
    response = asyncio.run(go())
    seconds = time.perf_counter() - started
    body = response.json()
    long = body.get("meta", {}).get("long", {})
    got = body.get("data", {}).get("line_items", []) if response.status_code == 200 else []
    return {"pages": pages, "pdf_bytes": len(pdf), "status": response.status_code, "items": items,
            "items_merged": len(got), "total_ok": body.get("data", {}).get("total") == total,
            "chunks": long.get("chunks"), "seconds": round(seconds, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_mib": round(base_rss / 1024, 1), "error": None if response.status_code == 200 else body}


def main() -> None:
    parser = argparse.ArgumentParser(description="peak RSS of a long PDF through the service")
    parser.add_argument("--pages", default="10,25,50,100")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    rows = []
    for pages in (int(p) for p in args.pages.split(",")):
        done = subprocess.run([sys.executable, __file__, "--child", str(pages)], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"engine": "reading ScriptedEngine (tests/long_support.py)", "machine": platform.platform(),
              "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "runs": rows}
    (args.out / "long_service_rss.json").write_text(json.dumps(report, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["pages"] for r in rows], [r["peak_rss_mib"] for r in rows], marker="o", label="peak RSS")
    ax.plot([r["pages"] for r in rows], [r["rss_before_mib"] for r in rows], linestyle="--", label="after imports")
    ax.set_xlabel("pages (40 invoice rows each)")
    ax.set_ylabel("MiB")
    ax.set_title("a long PDF through POST /extract/invoice")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "long_service_rss.png", dpi=120)


if __name__ == "__main__":
    main()
