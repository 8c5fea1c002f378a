"""Each example's ground truth, from the sources its eval spec lists: the first one present whose
value converts to the declared type (reference_types.py) wins.

| source                      | value                                                                   |
|-----------------------------|-------------------------------------------------------------------------|
| `metadata.<key>`            | the trajectory's metadata; present when it has the key (a null is a value) |
| `reference`                 | the recorded answer                                                     |
| `reference.parsed.<field>`  | the spec's parser on the recorded answer; absent when it names nothing (None, "unparsed", []) |
| `task.<name>`               | ground_truth.EXTRACTORS[name] on the task text; absent with a reason    |
Predictions may also use `output` and `parsed.<field>` (the answer being scored).

A metric's references and a scorer's inputs are named after their first source's last part
(`metadata.uncovered_lines` -> `uncovered_lines`). Per example, the source that supplied each is
recorded (`source_<name>`, "none" if nothing did), and so are the sources skipped because their value
did not convert (`rejected_<name>`: "metadata.uncovered_lines rejected:not_a_list"). An example with
no value for a required name is `unscorable`: with the first rejection when a source had a value of
the wrong type (`rejected:not_a_list`), else the reason of the last source that explained itself
(`unsupported_language_java`), else `no_<name>`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from qeforge.evaluation.ground_truth import EXTRACTORS, NoGroundTruth
from qeforge.evaluation.reference_types import Rejected, convert

UNPARSED = "unparsed"
_ABSENT = object()


@dataclass
class Truth:
    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # name -> source used, "none" if nothing had it
    rejected: dict[str, str] = field(default_factory=dict)  # name -> "<source> rejected:<why>; ..." or ""
    unscorable: str | None = None  # the reason, when a required name has no value


def reference_name(sources) -> str:
    return sources[0].rsplit(".", 1)[-1]


def check_source(source: str, where: str, *, has_parser: bool) -> None:
    from qeforge.evaluation.spec import EvalSpecError

    kind, _, rest = source.partition(".")
    ok = (
        source in ("output", "reference")
        or (kind in ("metadata", "parsed") and rest)
        or (kind == "task" and rest in EXTRACTORS)
        or (source.startswith("reference.parsed.") and len(source) > len("reference.parsed."))
    )
    if not ok:
        raise EvalSpecError(f"{where}: unknown source {source!r}; use output, parsed.<field>, metadata.<key>, "
                            f"reference, reference.parsed.<field> or task.<{'|'.join(EXTRACTORS)}>")
    if "parsed." in source and not has_parser:
        raise EvalSpecError(f"{where}: {source!r} needs a `parser`")


def named_sources(spec) -> list[tuple[str, tuple[str, ...], bool, str]]:
    """(name, sources, required, type) for every metric reference list and scorer input, each name once."""
    out, seen = [], set()
    scorer = spec.scorer or {}
    lists = [(reference_name(m.references), m.references, not m.optional, m.reference_type) for m in spec.metrics]
    lists += [(name, tuple(sources), name not in (scorer.get("optional_inputs") or ()), scorer["input_types"][name])
              for name, sources in (scorer.get("inputs") or {}).items()]
    for name, sources, required, type_name in lists:
        if name not in seen:
            seen.add(name)
            out.append((name, tuple(sources), required, type_name))
    return out


def _value(source: str, example: dict, parsed_reference):
    kind, _, key = source.partition(".")
    if source == "reference":
        return example["reference"]
    if kind == "metadata":
        return example["metadata"].get(key, _ABSENT) if isinstance(example.get("metadata"), dict) else _ABSENT
    if kind == "task":
        task = example.get("task")
        return EXTRACTORS[key](task if isinstance(task, str) else "")
    value = parsed_reference().get(source.removeprefix("reference.parsed."))
    return _ABSENT if value is None or value == UNPARSED or value == [] else value


def resolve_truth(spec, example: dict, parse=None) -> Truth:
    truth, cache = Truth(), {}

    def parsed_reference() -> dict:
        if "value" not in cache:
            cache["value"] = parse(example["reference"], example.get("task", "")) if parse else {}
        return cache["value"]

    for name, sources, required, type_name in named_sources(spec):
        value, used, reason, rejected = None, "none", None, []
        for source in sources:
            try:
                found = _value(source, example, parsed_reference)
                if found is not _ABSENT:
                    value, used = convert(type_name, found), source
                    break
            except NoGroundTruth as e:
                reason = e.reason
            except Rejected as e:
                rejected.append(f"{source} {e.reason}")
        truth.values[name], truth.sources[name], truth.rejected[name] = value, used, "; ".join(rejected)
        if used == "none" and required and truth.unscorable is None:
            truth.unscorable = (rejected[0].rpartition(" ")[2] if rejected else reason) or f"no_{name}"
    return truth


def resolve_truths(spec, examples: list[dict], *, workers: int | None = None) -> list[Truth]:
    """One Truth per example, in order; sandboxed sources (traced coverage) run in parallel."""
    from qeforge.evaluation.spec import resolve

    parse = resolve(spec.parser) if spec.parser else None
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda e: resolve_truth(spec, e, parse), examples))
