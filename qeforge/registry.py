"""MLflow model registry for adapters: one registered model per category, gated promotion.

Every training + evaluation cycle registers a version (source: the run's `adapter/` artifacts)
with lineage and results as tags and a model card as its description, and gets the alias
`candidate`. `champion` moves only through `promote` (after the blocking gate passed, or by a
person), which records who/when/why and the champion it replaced, so `rollback` can restore it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from qeforge.categories import registered_model_name
from qeforge.evaluation.report import headline_scores
from qeforge.hashing import file_sha256

CANDIDATE, CHAMPION = "candidate", "champion"


def client_for(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_by_alias(client, category: str, alias: str):
    """The model version holding `alias`, or None (no registered model yet, or alias unset)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(registered_model_name(category), alias)
    except MlflowException:
        return None


def lineage_tags(category: str, *, training: dict, summary: dict, policy: dict, dataset_version: str,
                 training_run_id: str, adapter_dir: Path, git_commit: str | None) -> dict:
    """The tags a registered version carries: where it came from (base, data, recipe, code, run) and how
    it did (scores vs base and Claude, routing). `training`: the adapter's training_summary.json;
    `summary`: its evaluation summary; `policy`: its routing policy entry."""
    return {
        "category": category,
        "base_model": training["base_model"],
        **{k: training[k] for k in ("base_gguf", "base_gguf_sha256") if k in training},  # a GGUF base
        "dataset_version": dataset_version,
        "dataset_hash": training["dataset_hash"],
        "recipe_hash": hashlib.sha256(json.dumps(training.get("recipe", {}), sort_keys=True).encode()).hexdigest()[:16],
        "git_commit": git_commit or "unknown",
        "training_run_id": training_run_id,
        "eval_spec": policy["eval_spec"],
        **headline_scores(summary),
        "adapter_gain_over_base": summary["adapter_gain_over_base"],
        "meets_target": summary["meets_target"],
        "routing_signal": policy["signal"],
        "routing_threshold": policy["threshold"],
        "routing_policy": json.dumps(policy, sort_keys=True),
        "adapter_size_bytes": training["adapter_size_bytes"],
        "adapter_dir": str(adapter_dir),
        "adapter_sha256": file_sha256(Path(adapter_dir) / "adapter_model.safetensors"),
    }


def register_candidate(client, category: str, *, run_id: str, tags: dict[str, str], card: str) -> str:
    """Register a new version from the run's adapter artifacts and point `candidate` at it."""
    from mlflow.exceptions import MlflowException

    name = registered_model_name(category)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"qeforge LoRA adapter for **{category}**. Aliases: `{CANDIDATE}` is the newest "
            f"evaluated version, `{CHAMPION}` is what `qeforge serve` answers with.",
            tags={"category": category},
        )
    version = client.create_model_version(name, source=f"runs:/{run_id}/adapter", run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()}, description=card)
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    return str(version.version)  # MLflow hands versions back as int or str depending on the call


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]  # why it failed; empty when it passed
    checks: dict[str, bool]


def promotion_gate(candidate: dict, champion: dict | None, *, smoke_ok: bool) -> GateResult:
    """May `candidate` replace `champion`? Both are tag dicts with quality_ratio and its CI.

    CI-aware: the candidate fails only when it is *credibly* worse, i.e. the upper end of its
    ratio CI is below the champion's point estimate (a small test split gives wide CIs, so a
    point estimate a hair lower is noise, not a regression).
    """
    ratio = float(candidate["quality_ratio"])
    checks = {
        "beats_base": float(candidate["adapter_gain_over_base"]) > 0,
        "smoke_answer": smoke_ok,
        "not_worse_than_champion": champion is None or float(candidate["quality_ratio_ci_high"]) >= float(champion["quality_ratio"]),
    }
    reasons = []
    if not checks["beats_base"]:
        reasons.append(f"does not beat its base model (gain {float(candidate['adapter_gain_over_base']):.4f})")
    if not smoke_ok:
        reasons.append("adapter did not load and answer the smoke prompt")
    if not checks["not_worse_than_champion"]:
        reasons.append(f"quality ratio {ratio:.3f} (CI high {float(candidate['quality_ratio_ci_high']):.3f}) is below "
                       f"champion v{champion.get('version', '?')}'s {float(champion['quality_ratio']):.3f}")
    return GateResult(not reasons, tuple(reasons), checks)


def _stamp(client, name: str, version: str, action: str, actor: str | None, reason: str) -> None:
    for key, value in {f"{action}_by": actor or getpass.getuser(), f"{action}_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       f"{action}_reason": reason}.items():
        client.set_model_version_tag(name, version, key, value)


def promote(client, category: str, version: str, *, actor: str | None = None, reason: str = "") -> str | None:
    """Point `champion` at `version`; returns the version it replaced (recorded on the new one)."""
    name = registered_model_name(category)
    client.get_model_version(name, version)  # a clear error for an unknown version
    found = version_by_alias(client, category, CHAMPION)
    previous = str(found.version) if found is not None else None
    if previous == str(version):
        return previous
    if previous is not None:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    _stamp(client, name, version, "promoted", actor, reason)
    return previous


def rollback(client, category: str, *, actor: str | None = None, reason: str = "") -> str:
    """Move `champion` back to the version the current champion replaced."""
    name = registered_model_name(category)
    current = version_by_alias(client, category, CHAMPION)
    if current is None:
        raise LookupError(f"{name} has no champion to roll back")
    previous = current.tags.get("previous_champion")
    if not previous:
        raise LookupError(f"{name} v{current.version} replaced no earlier champion; nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    _stamp(client, name, str(current.version), "rolled_back", actor, reason)
    _stamp(client, name, previous, "restored", actor, reason)
    return previous


def resolve_adapter(client, version, cache_dir: Path) -> Path:
    """A local PEFT dir for a model version: its recorded adapter_dir when the weights' hash matches,
    else a download of the run's adapter artifacts (a remote tracking server, another machine)."""
    local = Path(version.tags.get("adapter_dir", ""))
    weights = local / "adapter_model.safetensors"
    if version.tags.get("adapter_dir") and weights.exists() and file_sha256(weights) == version.tags.get("adapter_sha256"):
        return local
    target = cache_dir / version.name / str(version.version)
    if not (target / "adapter" / "adapter_model.safetensors").exists():
        target.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(version.run_id, "adapter", str(target))
    return target / "adapter"


def policy_of(version) -> dict:
    return json.loads(version.tags["routing_policy"])
