"""`extract train SCHEMA TRAIN.jsonl --out DIR`: a LoRA adapter for one schema, trained with peft.

TRAIN.jsonl is labeled documents, one a line: {"id", "text", "expected"} (the format of `extract
eval`). A field the labels leave out is trained as null where the schema allows it; a row whose
label the schema refuses is left out (counted on stderr). A seeded share (--validation) is held out
for early stopping. DIR gets the adapter (adapter_config.json, adapter_model.safetensors: the layout
vLLM loads), manifest.json, curves.json and curves.png. Then:

    extract run SCHEMA doc.txt --adapter DIR
    extract eval SCHEMA held_out.jsonl --adapter DIR --ab -o report.json
    extract merge DIR --out MODEL_DIR
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from extractor.cli.common import EXIT_OK, EXIT_USAGE, load_registry


def add_parser(sub: Any, engine_names: list[str]) -> None:
    from extractor.adapters.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a LoRA adapter for a schema on labeled documents",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("schema", help="a registered schema name or a JSON Schema file")
    p.add_argument("dataset", help="JSONL of {id, text, expected}")
    p.add_argument("--out", required=True, metavar="DIR", help="the adapter folder to write")
    p.add_argument("--name", help="the adapter's name (what vLLM serves it as; default the schema's name)")
    p.add_argument("--base-model", metavar="DIR", help="a HF model folder (default: the local engine's packaged model)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"at most this many passes ({d.epochs})")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"documents per step ({d.batch_size})")
    p.add_argument("--lr", type=float, default=d.learning_rate, help=f"learning rate ({d.learning_rate})")
    p.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank ({d.rank}; vLLM takes 8, 16, 32, 64, ...)")
    p.add_argument("--alpha", type=int, default=d.alpha, help=f"LoRA alpha ({d.alpha})")
    p.add_argument("--validation", type=float, default=d.validation, help=f"share held out ({d.validation})")
    p.add_argument("--patience", type=int, default=d.patience, help=f"evaluations without improvement ({d.patience})")
    p.add_argument("--eval-every", type=int, help="validate every N steps (default: every epoch)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"split, shuffle and init seed ({d.seed})")
    p.add_argument("--max-length", type=int, default=d.max_length, help=f"longest prompt + answer in tokens ({d.max_length})")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N documents")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from extractor.adapters.examples import read_training_set
    from extractor.adapters.train import TrainConfig, train_adapter

    if args.rank < 1 or args.batch_size < 1 or args.epochs < 1 or not 0 <= args.validation < 1:
        print("extract: train: --rank, --batch-size and --epochs must be positive, --validation in [0, 1)", file=sys.stderr)
        return EXIT_USAGE
    task = load_registry(args).get(args.schema)
    docs, skipped = read_training_set(args.dataset, task, limit=args.limit)
    if skipped:
        print(f"extract: train: {len(skipped)} row(s) whose label {task.name} refuses left out: "
              f"{', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}", file=sys.stderr)
    config = TrainConfig(rank=args.rank, alpha=args.alpha, learning_rate=args.lr, batch_size=args.batch_size,
                         epochs=args.epochs, max_steps=args.max_steps, eval_every=args.eval_every, patience=args.patience,
                         validation=args.validation, seed=args.seed, max_length=args.max_length, device=args.device)
    result = train_adapter(task, docs, args.out, config=config, base_model_dir=args.base_model, data_file=args.dataset,
                           name=args.name, progress=not args.no_progress)
    m = result.manifest.metrics
    val = (f", validation loss {m['val_loss']}, answers exact {m['val_answer_exact']}" if "val_loss" in m else "")
    print(f"extract: trained {result.manifest.name} ({task.name} v{task.version}) on {result.manifest.data.train} "
          f"document(s), {m['steps']} step(s) in {m['seconds']} s on {m['device']}{val}; wrote {result.path}",
          file=sys.stderr)
    return EXIT_OK
