"""Fold an adapter into its base model: a plain HF folder that any engine (`vllm serve MODEL_DIR`,
`--engine local --engine-option model_dir=MODEL_DIR`) loads without LoRA support."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from extractor.adapters.manifest import load_adapter
from extractor.errors import EngineUnavailable


def merge_adapter(adapter_dir: str | Path, out: str | Path, *, base_model_dir: str | Path | None = None) -> Path:
    """Write base + adapter (`merge_and_unload`) to `out` as float32 safetensors, with the tokenizer
    and the adapter's manifest (`adapter_manifest.json`: what the merged weights were trained for)."""
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineUnavailable(f"merging adapters needs peft: pip install 'extractor[train]' ({exc})") from exc
    from extractor.engines.local import converted_model_dir

    adapter = load_adapter(adapter_dir)
    base = Path(base_model_dir) if base_model_dir else converted_model_dir()
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    adapter.check_base(config, str(base))
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    (target / "adapter_manifest.json").write_text(adapter.manifest.dump(), encoding="utf-8")
    return target
