"""`extract merge DIR --out MODEL_DIR`: fold a LoRA adapter into its base model.

MODEL_DIR is a plain HF model folder (config.json, model.safetensors, the tokenizer): serve it with
`vllm serve MODEL_DIR` or run it with `--engine local --engine-option model_dir=MODEL_DIR`, no LoRA
support needed. The adapter's manifest is copied next to it (adapter_manifest.json).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from extractor.cli.common import EXIT_OK


def add_parser(sub: Any, engine_names: list[str]) -> None:
    p = sub.add_parser("merge", help="fold a LoRA adapter into its base model (a plain HF folder)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", metavar="DIR", help="the adapter folder (`extract train --out DIR`)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the merged model's folder")
    p.add_argument("--base-model", metavar="DIR", help="the base HF folder (default: the local engine's packaged model)")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from extractor.adapters.merge import merge_adapter

    path = merge_adapter(args.adapter, args.out, base_model_dir=args.base_model)
    print(f"extract: merged {args.adapter} into {path}", file=sys.stderr)
    return EXIT_OK
