"""The main job: demo data -> the whole asset graph -> one served answer per category.

An entry point above the Dagster wiring, like the CLI. Runs land in DAGSTER_HOME (default
<repo>/dagster_home), so `dagster dev` shows them afterwards exactly as if they had been launched
from the UI: the `curation` job, one `category` run per partition (train, evaluate, tune routing,
register, gate), then the `routing` policy job.
"""

from __future__ import annotations

import os
import time

from qeforge.locations import default_locations

# Checks that judge the model rather than the pipeline (see the end of run_main_job).
MODEL_QUALITY_VERDICTS = {"adapter_beats_base", "adapter_beats_base_val_loss", "champion_gate"}


def _category_line(category: str, run) -> str:
    nodes = {"lora_adapter", "adapter_evaluation", "routing_policy", "registered_adapter"}
    out = {}
    for node in nodes:
        try:
            out[node] = run.output_for_node(node)
        except Exception:  # noqa: BLE001 - a step that did not run has no output
            out[node] = None
    a, e, r, g = (out[n] for n in ("lora_adapter", "adapter_evaluation", "routing_policy", "registered_adapter"))
    parts = []
    if a:
        parts.append(f"val loss {a['val_loss']:.3f} vs base {a['base_val_loss']:.3f}")
    if e:
        s = e["summary"]
        q = s["quality_ratio"]
        parts.append(f"score adapter {s['adapter_score']['value']:.3f} base {s['base_score']['value']:.3f} "
                     f"claude {s['claude_score']['value']:.3f}; quality ratio {q['value']:.2f} [{q['ci_low']:.2f}, {q['ci_high']:.2f}]")
    if r:
        p = r["policy"]
        parts.append(f"routing {p['signal']} >= {p['threshold']}: {p['expected_local_share']:.0%} local")
    if g:
        gate = next((c for c in run.get_asset_check_evaluations() if c.check_name == "champion_gate"), None)
        verdict = "champion" if gate and gate.passed else f"candidate only ({gate.description if gate else 'gate did not run'})"
        parts.append(f"{g['name']} v{g['version']} {verdict}")
    return f"{category}: " + "; ".join(parts)


def run_main_job(
    *, demo_rows: int = 3000, seed: int = 0, skip_demo: bool = False, serve_check: bool = True,
    profile: str = "tiny", categories: tuple[str, ...] | None = None,
) -> int:
    """Demo data, then the curation, category and routing jobs; `profile` picks TrainingSettings.profile
    (base model and recipes) for this run only, as Dagster run config; `categories` trains, evaluates,
    registers and serves only these (default: all four)."""
    os.environ.setdefault("DAGSTER_HOME", default_locations().dagster_home)
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.resources import RESOURCES
    from qeforge import store
    from qeforge.categories import CATEGORIES
    from qeforge.demo import write_demo_jsonl
    from qeforge.ingest import format_summary, import_jsonl
    from qeforge.locations import qeforge_home

    db = RESOURCES["lancedb"].connect()
    if not skip_demo:
        path = qeforge_home() / "demo" / "trajectories.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_jsonl(path, n=demo_rows, seed=seed)
        print(format_summary(import_jsonl(db, path).as_dict()))
    elif store.trajectories(db).count_rows() == 0:
        print("no trajectories in LanceDB: run without --skip-demo or `qeforge import` first")
        return 1

    instance = dg.DagsterInstance.get()
    training_config = {"resources": {"training": {"config": {"profile": profile}}}}
    started = time.time()
    result = defs.resolve_job_def("curation").execute_in_process(instance=instance, run_config=training_config,
                                                                 raise_on_error=False)
    print(f"curation: {'ok' if result.success else 'FAILED'} ({time.time() - started:.0f}s, run {result.run_id})", flush=True)
    if not result.success:
        return 1
    checks = list(result.get_asset_check_evaluations())
    if not result.asset_materializations_for_node("curated_datasets"):
        for check in checks:
            if not check.passed:
                why = check.metadata.get("explanation") or check.metadata.get("reason")
                print(f"  check {check.check_name} FAILED" + (f": {why.value}" if why else ""))
        print("curation wrote no dataset version: nothing to train (see the checks above)")
        return 1
    for category in categories or CATEGORIES:
        started = time.time()
        run = defs.resolve_job_def("category").execute_in_process(
            instance=instance, partition_key=category, run_config=training_config, raise_on_error=False
        )
        print(f"[{time.time() - started:.0f}s] " + _category_line(category, run), flush=True)
        evaluations = run.get_asset_check_evaluations()
        # A candidate the gate keeps out of `champion` is a valid outcome, not a failed job.
        checks += [c for c in evaluations if c.check_name != "champion_gate"]
        if not run.success and not any(c.check_name == "champion_gate" and not c.passed for c in evaluations):
            print(f"category {category}: FAILED (run {run.run_id})")
            return 1
    # The combined policy covers every category evaluated so far; one never trained escalates to Claude.
    started = time.time()
    run = defs.resolve_job_def("routing").execute_in_process(instance=instance, raise_on_error=False)
    if not run.success:
        print(f"routing policy: FAILED (run {run.run_id})")
        return 1
    print(f"[{time.time() - started:.0f}s] routing policy: {run.output_for_node('routing_policies')['path']}", flush=True)
    for check in checks:
        print(f"  check {check.asset_key.to_user_string()}:{check.check_name} {'passed' if check.passed else 'FAILED'}")
    if serve_check:
        from qeforge.serving.registry_source import RegistrySource
        from qeforge.serving.smoke import serve_one_request_per_category

        started = time.time()
        registry = RegistrySource(RESOURCES["mlflow"].resolved_tracking_uri(), cache_dir=RESOURCES["serving"].registry_cache_path())
        settings = RESOURCES["serving"].settings(registry,
                                                 models_dir=RESOURCES["training"].models_path(), classifier_path=None, db=db)
        served = serve_one_request_per_category(settings, categories=categories)
        print(f"[{time.time() - started:.0f}s] serving smoke check: {'ok' if served else 'FAILED'}", flush=True)
        if not served:
            return 1
    # A model that does not (yet) beat its base is a result the report and the registry show, not a
    # broken job; every other failed check (schema, leakage, splits, sandbox, ...) fails the job.
    broken = [c for c in checks if not c.passed and c.check_name not in MODEL_QUALITY_VERDICTS]
    return 1 if broken else 0
