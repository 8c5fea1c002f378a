"""Evaluate one category's adapter against Claude and tune its routing threshold (Dagster-free).

    frame = evaluate_category(spec, dataset_dir, base, adapter_dir, db)   # one row per (split, example)
    summary = summarize(spec, frame)                                      # eval split: scores, ratio, CIs
    routing = tune_routing(spec, frame, prices, plot_dir)                 # tune split -> threshold -> confirmed on eval split

Claude's score on an example is its recorded answer's score, so quality ratios are paired:
they use only the examples whose recorded answer came from Claude. The adapter and the base
model answer every example (reported as `adapter_score_all`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from qeforge.evaluation import routing, stats
from qeforge.evaluation.calibration import reference_calibration, truth_counts
from qeforge.evaluation.generate import generate, load_adapter_model, prompt_messages
from qeforge.evaluation.policy import jsonable
from qeforge.evaluation.sandbox import isolation_summary
from qeforge.evaluation.references import resolve_truths
from qeforge.evaluation.scoring import score_outputs
from qeforge.evaluation.spec import EvalSpec
from qeforge.signals import SIGNALS, KnownGood, knn_similarity, user_text


def approx_tokens(text: str) -> int:
    # Claude bills its own tokens; ~4 characters per token is Anthropic's rule of thumb for English and code.
    return max(1, math.ceil(len(text) / 4))


PROMPTS = {"chat": prompt_messages}  # an eval spec's `prompt`: messages -> the turns the model sees


def load_examples(dataset_dir: Path, split: str, prompt: str = "chat") -> list[dict]:
    from datasets import load_from_disk

    rows = load_from_disk(str(dataset_dir))[split]
    return [
        {
            "id": r["id"],
            "split": split,
            "model": r["model"],
            "prompt": PROMPTS[prompt](r["messages"]),
            "task": next(m["content"] for m in r["messages"] if m["role"] == "user"),
            "reference": next(m["content"] for m in r["messages"] if m["role"] == "assistant"),
            "metadata": json.loads(r["metadata"]) if isinstance(r["metadata"], str) else (r["metadata"] or {}),
        }
        for r in rows
    ]


def split_ids(dataset_dir: Path) -> dict[str, set[str]]:
    """The example ids of every split, read from the id column alone."""
    from datasets import load_from_disk

    return {split: set(rows["id"]) for split, rows in load_from_disk(str(dataset_dir)).items()}


def is_claude(model: str) -> bool:
    return model.lower().startswith("claude")


def evaluate_category(
    spec: EvalSpec,
    dataset_dir: Path,
    base_model: str,
    adapter_dir: Path,
    db,
    *,
    batch_size: int = 16,
    weights: str = "model",
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Generate with the adapter (tune + eval splits) and the base (eval split); score them and Claude.
    `weights`: the gateway's ("model" or "int8"), so the signal tuned here is the one it computes."""
    from qeforge.embedding import embed_texts

    model, tokenizer = load_adapter_model(base_model, adapter_dir)
    known_good = KnownGood(db)
    max_new = int(spec.generation.get("max_new_tokens", 128))
    frames = []
    for split in (spec.tune_split, spec.eval_split):
        examples = load_examples(dataset_dir, split, spec.prompt)
        if not examples:
            raise ValueError(f"{spec.task}: split {split!r} of {dataset_dir} is empty; nothing to evaluate")
        prompts = [e["prompt"] for e in examples]

        def progress(done, total, seconds, who):
            log(f"{spec.task}/{split}: {who} generated {done}/{total} ({done / max(seconds, 1e-9):.1f} examples/s)")

        adapter_out = generate(model, tokenizer, prompts, max_new_tokens=max_new, batch_size=batch_size, weights=weights,
                               progress=lambda d, t, s: progress(d, t, s, "adapter"))
        frame = pd.DataFrame({
            "split": split,
            "id": [e["id"] for e in examples],
            "recorded_model": [e["model"] for e in examples],
            "claude_reference": [is_claude(e["model"]) for e in examples],
            "mean_logprob": [g.mean_logprob for g in adapter_out],
            "input_tokens": [approx_tokens(user_text(e["prompt"])) for e in examples],
            "claude_output_tokens": [approx_tokens(e["reference"]) for e in examples],
        })
        frame["knn_similarity"] = knn_similarity(known_good, spec.task, prompts, embed_texts)

        # Ground truth once per example: the same for every model scored on it.
        truths = resolve_truths(spec, examples, workers=workers)
        score = lambda outputs, idx: score_outputs(spec, outputs, [examples[i] for i in idx],  # noqa: E731
                                                   truths=[truths[i] for i in idx], workers=workers)[0]
        everyone = range(len(examples))
        scored = {"adapter": score([g.text for g in adapter_out], everyone)}
        if split == spec.eval_split:
            base_out = generate(model, tokenizer, prompts, max_new_tokens=max_new, batch_size=batch_size, weights=weights,
                                use_adapter=False, progress=lambda d, t, s: progress(d, t, s, "base"))
            scored["base"] = score([g.text for g in base_out], everyone)
        claude_idx = [i for i, e in enumerate(examples) if is_claude(e["model"])]
        claude = score([examples[i]["reference"] for i in claude_idx], claude_idx)
        scored["claude"] = claude.set_index(pd.Index(claude_idx)).reindex(everyone)
        shared = ["id", *[c for c in scored["adapter"] if c.startswith(("source_", "rejected_"))]]
        frame = pd.concat([frame, scored["adapter"][shared[1:]]], axis=1)
        for who, part in scored.items():
            part = part.reset_index(drop=True).drop(columns=shared)
            frame = pd.concat([frame, part.add_prefix(f"{who}_")], axis=1)
        # Paired comparisons need every model's answer scored: a metric that failed on one answer
        # (metric_error) takes the example out for all; a missing truth already did.
        reasons = frame[[f"{who}_unscorable_reason" for who in scored]].fillna("")
        frame["unscorable_reason"] = reasons.apply(lambda row: next((r for r in row if r), ""), axis=1)
        frame["scorable"] = frame["unscorable_reason"] == ""
        unscorable = int((~frame["scorable"]).sum())
        log(f"{spec.task}/{split}: scored {len(examples)} examples ({len(claude_idx)} with a Claude reference, "
            f"{unscorable} unscorable)")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def reference_answers(frame: pd.DataFrame) -> pd.DataFrame:
    """Claude's recorded answers as score_outputs scored them: `score`, `scorable`, `unscorable_reason`
    and the ground-truth sources, one row per Claude-referenced example."""
    rows = frame[frame["claude_reference"]]
    # Frames built by hand (tests) may carry only the shared reason, or none.
    reason = rows.get("claude_unscorable_reason", rows.get("unscorable_reason", pd.Series("", index=rows.index))).fillna("")
    return rows[[c for c in rows if c.startswith(("source_", "rejected_"))]].assign(
        score=rows["claude_score"], scorable=reason == "", unscorable_reason=reason)


def _triple(values) -> dict:
    point, low, high = values
    return {"value": point, "ci_low": low, "ci_high": high}


def summarize(spec: EvalSpec, frame: pd.DataFrame, *, seed: int = 0) -> dict:
    """Eval-split scores with bootstrap 95% CIs, the quality ratio vs Claude, and the target's verdict."""
    split = frame[frame["split"] == spec.eval_split]
    ev = split[split["scorable"]] if "scorable" in split else split
    paired = ev[ev["claude_reference"]]
    a, b, c = (paired[f"{w}_score"].to_numpy(float) for w in ("adapter", "base", "claude"))
    ratio = stats.ratio_ci(a, c, seed=seed)
    summary = {
        "task": spec.task,
        "spec_version": spec.version,
        "spec_digest": spec.digest,
        "eval_split": spec.eval_split,
        "n_eval": int(len(split)),
        "n_scored": int(len(ev)),
        **truth_counts(split),
        "n_paired": int(len(paired)),
        "score_range": list(spec.score_range),
        "adapter_score": _triple(stats.mean_ci(a, seed=seed)),
        "base_score": _triple(stats.mean_ci(b, seed=seed)),
        "claude_score": _triple(stats.mean_ci(c, seed=seed)),
        "adapter_score_all": float(ev["adapter_score"].mean()) if len(ev) else float("nan"),
        "base_score_all": float(ev["base_score"].mean()) if len(ev) else float("nan"),
        "quality_ratio": _triple(ratio),
        "base_quality_ratio": _triple(stats.ratio_ci(b, c, seed=seed)),
        "adapter_gain_over_base": float(np.mean(a - b)) if len(a) else float("nan"),
        "target_ratio": spec.target_ratio,
        "meets_target": bool(ratio[0] >= spec.target_ratio),
        # Claude's recorded answers on their own truths, every split evaluated: is the yardstick sound?
        "reference_calibration": reference_calibration(spec.score_range, reference_answers(frame)),
        # Plain words for the report and the model card when generated code ran without bubblewrap.
        "sandbox_isolation": isolation_summary(
            v for who in ("adapter", "base", "claude") if f"{who}_sandbox_isolation" in frame
            for v in frame[f"{who}_sandbox_isolation"]),
        "detail": {
            col: {who: float(paired[f"{who}_{col}"].astype(float).mean()) for who in ("adapter", "base", "claude")}
            for col in spec.report_columns
            if all(f"{who}_{col}" in paired for who in ("adapter", "base", "claude"))
        },
    }
    return jsonable(summary)


def overall_ratio(frames: dict[str, pd.DataFrame], eval_splits: dict[str, str], weights: dict[str, float],
                  *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Traffic-weighted mean of per-category quality ratios, with a bootstrap CI that resamples each
    category's paired examples independently (categories have different score scales, so ratios are averaged)."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for category, frame in frames.items():
        p = frame[(frame["split"] == eval_splits[category]) & frame["claude_reference"]]
        p = p[p["scorable"]] if "scorable" in p else p
        if len(p) and p["claude_score"].mean() > 0:
            pairs[category] = (p["adapter_score"].to_numpy(float), p["claude_score"].to_numpy(float))
    if not pairs:
        return {"value": None, "ci_low": None, "ci_high": None, "categories": []}
    total = sum(weights[c] for c in pairs)
    point = sum(weights[c] / total * a.mean() / c_.mean() for c, (a, c_) in pairs.items())
    draws = np.zeros(n_resamples)
    for category, (a, c_) in pairs.items():
        idx = rng.integers(0, len(a), size=(n_resamples, len(a)))
        den = c_[idx].mean(axis=1)
        ratio = np.divide(a[idx].mean(axis=1), den, out=np.ones_like(den), where=den > 0)
        draws += weights[category] / total * ratio
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"value": float(point), "ci_low": float(low), "ci_high": float(high), "categories": sorted(pairs)}


def tune_routing(spec: EvalSpec, frame: pd.DataFrame, prices: routing.Prices, plot_dir: Path, *, seed: int = 0) -> dict:
    """Choose the signal (AUROC on the tune split), the threshold (max local share at the target),
    and confirm both on the eval split; RouteLLM's CPT/APGR on the eval split."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    frame = frame[frame["scorable"]] if "scorable" in frame else frame
    tune = frame[(frame["split"] == spec.tune_split) & frame["claude_reference"]]
    test = frame[(frame["split"] == spec.eval_split) & frame["claude_reference"]]
    if tune.empty or test.empty:  # e.g. every example of a split unscorable: no evidence, so Claude answers
        return jsonable(escalate_everything(
            f"no scorable Claude-referenced examples in {spec.tune_split} ({len(tune)}) or {spec.eval_split} "
            f"({len(test)}): every request escalates"))

    def arrays(part, signal):
        return (part[signal].to_numpy(float), part["adapter_score"].to_numpy(float), part["claude_score"].to_numpy(float))

    tokens = lambda part: dict(input_tokens=part["input_tokens"].to_numpy(float),  # noqa: E731
                               output_tokens=part["claude_output_tokens"].to_numpy(float), prices=prices)
    aurocs = {s: routing.signal_auroc(*arrays(tune, s), target_ratio=spec.target_ratio) for s in SIGNALS}
    # Highest AUROC wins; nan (one class on the tune split: every local answer good, or every one bad) ranks last.
    signal = max(SIGNALS, key=lambda s: (not math.isnan(aurocs[s]), aurocs[s] if not math.isnan(aurocs[s]) else 0))
    swept = routing.sweep(*arrays(tune, signal), **tokens(tune))
    chosen = routing.select_threshold(swept, spec.target_ratio)
    threshold = float(chosen["threshold"])
    confirmed = routing.apply_threshold(threshold, *arrays(test, signal), **tokens(test), seed=seed)
    curve = routing.pgr_curve(*arrays(test, signal))
    quality_plot = routing.plot_quality_cost(swept, threshold, spec.target_ratio, plot_dir / "quality_cost.png",
                                             f"{spec.task}: routing on {signal} ({spec.tune_split})")
    pgr_plot = routing.plot_pgr(curve, plot_dir / "pgr_curve.png", f"{spec.task}: PGR vs Claude calls ({spec.eval_split})")
    swept.to_csv(plot_dir / "sweep.csv", index=False)
    result = {
        "signal": signal,
        "signal_auroc": aurocs,
        "threshold": threshold,  # may be inf: every request escalates
        "tuned": {k: float(chosen[k]) for k in ("local_share", "quality_ratio", "cost_per_1k", "savings_per_1k")},
        "confirmed": confirmed,
        "cpt": {f"{int(x * 100)}": routing.cpt(curve, x) for x in (0.5, 0.8, 0.95)},
        "apgr": routing.apgr(curve),
        "plots": {"quality_cost": str(quality_plot), "pgr": str(pgr_plot)},
        "sweep_csv": str(plot_dir / "sweep.csv"),
    }
    return jsonable(result)


def escalate_everything(note: str) -> dict:
    """The policy without evidence: threshold +inf, so every request goes to Claude (quality ratio 1)."""
    confirmed = {"threshold": math.inf, "n": 0, "local_share": 0.0, "claude_share": 1.0, "quality_ratio": 1.0,
                 "quality_ratio_low": 1.0, "quality_ratio_high": 1.0, "savings_per_1k": 0.0}
    return {"signal": SIGNALS[0], "signal_auroc": {s: math.nan for s in SIGNALS}, "threshold": math.inf,
            "tuned": {k: confirmed[k] for k in ("local_share", "quality_ratio", "savings_per_1k")},
            "confirmed": confirmed, "cpt": {"50": None, "80": None, "95": None}, "apgr": None,
            "plots": {}, "sweep_csv": None, "note": note}


def policy_entry(spec: EvalSpec, routing_result: dict, summary: dict, *, adapter_dir: str, dataset_version: str) -> dict:
    """What the serving shim and the registry need to route one category."""
    confirmed = routing_result["confirmed"]
    return {
        "signal": routing_result["signal"],
        "threshold": routing_result["threshold"],
        "target_ratio": spec.target_ratio,
        "expected_local_share": confirmed["local_share"],
        "expected_quality_ratio": confirmed["quality_ratio"],
        "expected_quality_ratio_ci": [confirmed["quality_ratio_low"], confirmed["quality_ratio_high"]],
        "expected_savings_per_1k": confirmed["savings_per_1k"],
        "adapter_quality_ratio": summary["quality_ratio"]["value"],
        "adapter_dir": adapter_dir,
        "dataset_version": dataset_version,
        "eval_spec": f"{spec.name} ({spec.digest})",
    }
