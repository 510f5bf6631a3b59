"""The flags of the quality features that `extract run` and `extract batch` share: where values
occur in the document (`--spans`), per-field confidence (`--confidence`) and rejecting values
that occur nowhere (`--require-grounded`), and decoding only values that occur in the document
(`--grounded-decoding`). `extractor_options` turns them into `Extractor` keywords."""

from __future__ import annotations

import argparse
from typing import Any


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spans", action="store_true",
                        help="add meta.spans: where each string and number occurs in the document")
    parser.add_argument("--confidence", action="store_true",
                        help="add meta.confidence: per-field probability from token logprobs (engines that return them)")
    parser.add_argument("--require-grounded", action="store_true",
                        help="a free-text value that occurs nowhere in the document fails validation and is retried")
    parser.add_argument("--grounded-decoding", action=argparse.BooleanOptionalAction, default=None,
                        help="decode free-text strings and numbers only as values that occur in the document "
                             "(default: the schema's own setting, on for invoice, receipt and job_posting)")


def extractor_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"spans": args.spans, "confidence": args.confidence, "require_grounded": args.require_grounded,
            "grounded_decoding": args.grounded_decoding}
