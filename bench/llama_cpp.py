"""llama.cpp's server on the same base and adapters as the shim, for bench/serving.py.

The base and each PEFT adapter go through llama.cpp's own converters (convert_hf_to_gguf.py,
convert_lora_to_gguf.py, f32); a quantized base, when asked for, through llama-quantize. The server
loads every adapter at scale 0 (--lora-init-without-apply) and a request picks its adapter with the
`lora` field, as the issue's comparison did. Build it first: `bash bench/llama_cpp.sh`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent / ".llama.cpp"


def available() -> str | None:
    """Why llama.cpp cannot run here, or None."""
    missing = [p for p in (TREE / "build" / "bin" / "llama-server", TREE / "convert_hf_to_gguf.py") if not p.exists()]
    return f"not built ({', '.join(map(str, missing))}): run bash bench/llama_cpp.sh" if missing else None


def _convert(script: str, args: list[str], out: Path) -> Path:
    if not out.exists():
        subprocess.run([sys.executable, str(TREE / script), *args, "--outfile", str(out)], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(TREE / "gguf-py"), "HF_HUB_OFFLINE": "1"})
    return out


def convert(base: str, adapters: dict[str, Path], out: Path, quant: str | None = None) -> tuple[Path, dict[str, Path]]:
    """(base GGUF, {category: adapter GGUF}); `quant` e.g. "Q4_1" quantizes the f32 base."""
    out.mkdir(parents=True, exist_ok=True)
    base_gguf = _convert("convert_hf_to_gguf.py", [base, "--outtype", "f32"], out / "base-f32.gguf")
    if quant:
        quantized = out / f"base-{quant}.gguf"
        if not quantized.exists():
            subprocess.run([str(TREE / "build" / "bin" / "llama-quantize"), str(base_gguf), str(quantized), quant],
                           check=True, capture_output=True)
        base_gguf = quantized
    loras = {c: _convert("convert_lora_to_gguf.py", [str(p), "--base", base, "--outtype", "f32"], out / f"lora-{c}.gguf")
             for c, p in adapters.items()}
    return base_gguf, loras


def launch(base_gguf: Path, loras: dict[str, Path], port: int, *, parallel: int, threads: int,
           context_per_slot: int = 1024) -> subprocess.Popen:
    """llama-server on 127.0.0.1:port, `parallel` slots, every adapter loaded at scale 0."""
    cmd = [str(TREE / "build" / "bin" / "llama-server"), "-m", str(base_gguf), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(threads), "-np", str(parallel), "-c", str(parallel * context_per_slot), "--lora-init-without-apply",
           "--no-webui"]
    for path in loras.values():
        cmd += ["--lora", str(path)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def request(loras: dict[str, Path], category: str, body: dict) -> dict:
    """An OpenAI chat body for llama-server: greedy (temperature 0), this category's adapter at scale 1."""
    ids = list(loras)
    return {**body, "temperature": 0, "lora": [{"id": ids.index(category), "scale": 1.0}]}
