"""LoRA adapters per schema: train one on labeled documents (`train`), describe it (`manifest`),
map schemas to adapters (`registry`), fold one into its base model (`merge`).

Only `manifest` and `registry` are imported by the extraction path; `train` and `merge` need peft
(`pip install 'extractor[train]'`) and are imported on use.
"""

from __future__ import annotations

from extractor.adapters.manifest import MANIFEST_FILE, LoadedAdapter, Manifest, load_adapter
from extractor.adapters.registry import AdapterRegistry

__all__ = ["MANIFEST_FILE", "AdapterRegistry", "LoadedAdapter", "Manifest", "load_adapter"]
