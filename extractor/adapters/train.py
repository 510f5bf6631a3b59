"""Train a schema's LoRA adapter with peft on labeled documents.

    result = train_adapter(task, docs, "adapters/receipt", config=TrainConfig(epochs=6))

The base model is the local engine's (the packaged SmolLM2, converted once by
`converted_model_dir`) unless `base_model_dir` names another HF folder (a GPU box's copy). The
examples are the engines' own prompts with the compact JSON record as the answer, the loss on the
answer tokens only (`examples`). A seeded split holds `validation` of the documents out; after
every epoch (or `eval_every` steps) the validation loss is measured, the best adapter weights are
kept, and training stops after `patience` evaluations without improvement. The folder gets peft's
`adapter_config.json` + `adapter_model.safetensors` (the layout vLLM loads), `manifest.json`,
`curves.json` and `curves.png`.

On a GPU (cuda when available) the forward passes run under bf16 autocast; on the CPU in float32.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from extractor.adapters.examples import IGNORE, TrainingExample, build_examples, split_documents
from extractor.adapters.manifest import (
    MANIFEST_FILE,
    BaseModelInfo,
    DataInfo,
    Manifest,
    SchemaInfo,
    architecture,
    sha256_bytes,
    sha256_file,
    task_digest,
    text_digest,
)
from extractor.contracts.contract import Task
from extractor.errors import DocumentError, EngineUnavailable
from extractor.eval.run import LabeledDocument

log = logging.getLogger(__name__)

#: every projection of a Llama block (vLLM packs q/k/v and gate/up itself)
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters (all recorded in the manifest)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 8
    #: stop after this many optimizer steps (None: `epochs` decides)
    max_steps: int | None = None
    #: evaluate every N steps (None: after every epoch)
    eval_every: int | None = None
    #: evaluations without a better validation loss before stopping
    patience: int = 2
    #: share of the documents held out for validation
    validation: float = 0.2
    warmup: float = 0.05
    seed: int = 0
    #: a document whose prompt plus answer is longer is left out (the model's context)
    max_length: int = 2048
    target_modules: tuple[str, ...] = LLAMA_TARGETS
    #: "cuda", "cpu" or None (cuda when available)
    device: str | None = None


@dataclass
class Curves:
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_token_accuracy: list[float] = field(default_factory=list)
    val_answer_exact: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    path: Path
    manifest: Manifest
    curves: Curves
    seconds: float


def _versions() -> dict[str, str]:
    out = {}
    for name in ("extractor", "peft", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def base_model_info(base_dir: Path, name: str) -> BaseModelInfo:
    """Name, weights' sha256 (of the safetensors files, in name order) and architecture of a HF folder."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    weights = sorted(base_dir.glob("*.safetensors"))
    digest = sha256_bytes("".join(sha256_file(w) for w in weights).encode()) if weights else None
    return BaseModelInfo(name=name, sha256=digest, config=architecture(config))


def _batches(examples: Sequence[TrainingExample], size: int, rng: random.Random | None) -> list[list[TrainingExample]]:
    order = list(examples)
    if rng is not None:
        rng.shuffle(order)
    return [order[i:i + size] for i in range(0, len(order), size)]


def _collate(batch: Sequence[TrainingExample], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _evaluate(model: Any, examples: Sequence[TrainingExample], size: int, pad_id: int, device: Any,
              autocast: Callable[[], Any]) -> dict[str, float]:
    """Validation loss per answer token, token accuracy, and the share of answers teacher-forced
    argmax gets entirely right (= greedy decoding would write the label exactly)."""
    import torch

    model.eval()
    loss_sum = 0.0
    tokens = correct = exact = 0
    with torch.no_grad():
        for batch in _batches(examples, size, None):
            inputs = _collate(batch, pad_id, device)
            with autocast():
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
            shift_logits, shift_labels = logits[:, :-1], inputs["labels"][:, 1:]
            keep = shift_labels != IGNORE
            loss_sum += float(torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="sum"))
            hits = (shift_logits.argmax(-1) == shift_labels) & keep
            tokens += int(keep.sum())
            correct += int(hits.sum())
            exact += int(((hits | ~keep).all(dim=1)).sum())
    model.train()
    return {"loss": loss_sum / max(tokens, 1), "token_accuracy": correct / max(tokens, 1),
            "answer_exact": exact / max(len(examples), 1)}


def plot_curves(curves: Curves, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(curves.step, curves.train_loss, label="train loss (answer tokens)", alpha=0.7)
    if curves.val_step:
        ax.plot(curves.val_step, curves.val_loss, "o-", label="validation loss")
        ax2 = ax.twinx()
        ax2.plot(curves.val_step, curves.val_answer_exact, "s--", color="tab:green", label="validation answers exact")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("share of answers exact")
        ax2.legend(loc="center right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_adapter(task: Task[Any], docs: Sequence[LabeledDocument], out: str | Path, *,
                  config: TrainConfig = TrainConfig(), base_model_dir: str | Path | None = None,
                  base_model_name: str | None = None, data_file: str | Path | None = None, name: str | None = None,
                  progress: bool = True) -> TrainResult:
    """Train `task`'s adapter on `docs` and write it to `out` (see the module docstring)."""
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from tqdm import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineUnavailable(f"training adapters needs peft: pip install 'extractor[train]' ({exc})") from exc
    from extractor.engines.local import MODEL_NAME, converted_model_dir

    started = time.perf_counter()
    base = Path(base_model_dir) if base_model_dir else converted_model_dir()
    base_name = base_model_name or (MODEL_NAME if base_model_dir is None else base.name)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    train_docs, val_docs = split_documents(docs, config.validation, config.seed)
    tokenizer: Any = AutoTokenizer.from_pretrained(base)
    train_ex, skipped = build_examples(tokenizer, task, train_docs, max_length=config.max_length)
    val_ex, val_skipped = build_examples(tokenizer, task, val_docs, max_length=config.max_length)
    if skipped or val_skipped:
        log.warning("%d document(s) longer than %d tokens left out: %s", len(skipped) + len(val_skipped),
                    config.max_length, ", ".join([*skipped, *val_skipped][:10]))
    if not train_ex:
        raise DocumentError("no training document fits the model's context")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    loaded: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model: Any = loaded.to(device)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=list(config.target_modules))
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_ex) / config.batch_size)
    total = min(config.max_steps or sys.maxsize, steps_per_epoch * config.epochs)
    warmup = max(1, round(total * config.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - max(0, s - warmup) / max(1, total - warmup)))
    use_bf16 = device.type == "cuda"

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    every = config.eval_every or steps_per_epoch
    curves = Curves()
    best: tuple[float, dict[str, Any], dict[str, float], int] | None = None
    bad = 0
    rng = random.Random(config.seed)
    step = 0
    stopped_early = False
    bar = tqdm(total=total, unit="step", desc=f"train {task.name}", file=sys.stderr, disable=not progress)
    try:
        while step < total and not stopped_early:
            for batch in _batches(train_ex, config.batch_size, rng):
                inputs = _collate(batch, pad_id, device)
                with autocast():
                    loss = model(**inputs).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                curves.step.append(step)
                loss_value = float(loss.detach())
                curves.train_loss.append(loss_value)
                bar.update(1)
                postfix = {"loss": f"{loss_value:.4f}"}
                if val_ex and (step % every == 0 or step == total):
                    scores = _evaluate(model, val_ex, config.batch_size, pad_id, device, autocast)
                    curves.val_step.append(step)
                    curves.val_loss.append(scores["loss"])
                    curves.val_token_accuracy.append(scores["token_accuracy"])
                    curves.val_answer_exact.append(scores["answer_exact"])
                    postfix["val"] = f"{scores['loss']:.4f}"
                    if best is None or scores["loss"] < best[0]:
                        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                        best, bad = (scores["loss"], weights, scores, step), 0
                    else:
                        bad += 1
                        if bad >= config.patience:
                            stopped_early = True
                bar.set_postfix(postfix)
                if step >= total or stopped_early:
                    break
    finally:
        bar.close()
    if best is not None:  # the weights of the best validation loss
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best[1]:
                    p.copy_(best[1][n])

    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    data_bytes = Path(data_file).read_bytes() if data_file else "\n".join(
        json.dumps({"id": d.id, "text": d.text, "expected": d.expected}, sort_keys=True) for d in docs).encode()
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {"steps": step, "epochs": round(step / steps_per_epoch, 2), "stopped_early": stopped_early,
                               "final_train_loss": curves.train_loss[-1] if curves.train_loss else None,
                               "seconds": round(seconds, 1), "device": device.type}
    if best is not None:
        metrics.update({"best_step": best[3], "val_loss": round(best[2]["loss"], 5),
                        "val_token_accuracy": round(best[2]["token_accuracy"], 4),
                        "val_answer_exact": round(best[2]["answer_exact"], 4)})
    manifest = Manifest(
        name=name or task.name,
        base_model=base_model_info(base, base_name),
        schema=SchemaInfo(name=task.name, version=task.version, sha256=task_digest(task)),
        data=DataInfo(file=Path(data_file).name if data_file else "", sha256=sha256_bytes(data_bytes),
                      documents=len(docs), train=len(train_ex), validation=len(val_ex),
                      train_ids=[d.id for d in train_docs], train_text_sha256=[text_digest(d.text) for d in train_docs],
                      validation_ids=[d.id for d in val_docs]),
        hyperparameters={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        metrics=metrics,
        versions=_versions(),
    )
    (target / MANIFEST_FILE).write_text(manifest.dump(), encoding="utf-8")
    (target / "curves.json").write_text(json.dumps(asdict(curves)) + "\n", encoding="utf-8")
    try:
        plot_curves(curves, target / "curves.png", f"{task.name} LoRA r={config.rank} on {len(train_ex)} documents")
    except ImportError:  # matplotlib is optional (the `train` extra brings it); curves.json has the figures
        log.warning("no matplotlib: curves.png not written")
    readme = target / "README.md"  # peft's model-card stub says nothing about this adapter
    if readme.exists():
        readme.unlink()
    return TrainResult(target, manifest, curves, seconds)
