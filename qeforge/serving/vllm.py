"""vLLM serving of the same champions: `--lora-modules name=path` per category on one base model.

    vllm serve microsoft/phi-4 --enable-lora --max-lora-rank 16 --max-loras 4 \\
        --lora-modules qeforge-test-generation=/path/to/adapter ...
Clients then pass `model="qeforge-<category>"`, the same names the shim accepts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from qeforge.categories import registered_model_name
from qeforge.serving.registry_source import RegistrySource


def vllm_lora_modules(tracking_uri: str, cache_dir: Path) -> dict:
    snapshot = RegistrySource(tracking_uri, cache_dir=cache_dir).load()
    modules, ranks = [], []
    for category, adapter in snapshot.adapters.items():
        config = json.loads((Path(adapter.path) / "adapter_config.json").read_text())
        ranks.append(int(config.get("r", 16)))
        modules.append({"name": registered_model_name(category), "path": str(adapter.path),
                        "base_model_name": snapshot.base_model, "version": adapter.version})
    args = ["vllm", "serve", snapshot.base_model, "--enable-lora", "--max-lora-rank", str(max(ranks)),
            "--max-loras", str(len(modules)), "--lora-modules", *[f"{m['name']}={m['path']}" for m in modules]]
    return {"base_model": snapshot.base_model, "lora_modules": modules, "command": shlex.join(args)}
