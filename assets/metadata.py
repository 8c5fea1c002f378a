"""Small helpers that turn numbers into Dagster metadata a reviewer reads."""

from __future__ import annotations

import dagster as dg
import numpy as np


def md_table(rows: dict, key: str = "", value: str = "count") -> dg.MetadataValue:
    lines = [f"| {key} | {value} |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return dg.MetadataValue.md("\n".join(lines))


def md_records(records: list[dict]) -> dg.MetadataValue:
    if not records:
        return dg.MetadataValue.md("_none_")
    cols = list(records[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def md_histogram(values, bins: int = 10, lo: float = 0.0, hi: float = 1.0, width: int = 40) -> dg.MetadataValue:
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    lines = ["```"] + [
        f"{edges[i]:.2f}-{edges[i + 1]:.2f} {'#' * int(width * c / top):<{width}} {c}" for i, c in enumerate(counts)
    ] + ["```"]
    return dg.MetadataValue.md("\n".join(lines))


def md_image(path, alt: str = "plot") -> dg.MetadataValue:
    """A PNG inlined as a data URI, so the Dagster UI shows the plot itself rather than a path."""
    import base64
    from pathlib import Path

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def counts(series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts(dropna=False).sort_index().items()}
