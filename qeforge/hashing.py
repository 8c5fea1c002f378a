"""sha256 helpers: of a file, read in 1 MiB chunks so a GGUF base of gigabytes never sits in memory whole; of a text."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    """Hex sha256 of a text's UTF-8 (lone surrogates kept as they are: a quarantined row's raw text may hold them)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
