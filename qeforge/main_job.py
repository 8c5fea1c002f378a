"""The main job: demo data -> the whole asset graph, recorded in the Dagster instance.

Runs land in DAGSTER_HOME (default <repo>/dagster_home), so `dagster dev`
shows them afterwards exactly as if they had been launched from the UI.
"""

from __future__ import annotations

import os
import time

from qeforge.locations import default_locations


def run_main_job(*, demo_rows: int = 3000, seed: int = 0, skip_demo: bool = False) -> int:
    os.environ.setdefault("DAGSTER_HOME", default_locations().dagster_home)
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    import dagster as dg

    from pipelines.definitions import defs
    from qeforge.categories import CATEGORIES
    from qeforge import store
    from qeforge.cli import _db, _print_summary
    from qeforge.demo import write_demo_jsonl
    from qeforge.ingest import import_jsonl
    from qeforge.locations import qeforge_home

    if not skip_demo:
        path = qeforge_home() / "demo" / "trajectories.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_jsonl(path, n=demo_rows, seed=seed)
        _print_summary(import_jsonl(_db(), path).as_dict())
    elif store.trajectories(_db()).count_rows() == 0:
        print("no trajectories in LanceDB: run without --skip-demo or `qeforge import` first")
        return 1

    instance = dg.DagsterInstance.get()
    started = time.time()
    result = defs.resolve_job_def("curation").execute_in_process(instance=instance, raise_on_error=False)
    print(f"curation: {'ok' if result.success else 'FAILED'} ({time.time() - started:.0f}s, run {result.run_id})")
    if not result.success:
        return 1
    checks = list(result.get_asset_check_evaluations())
    for category in CATEGORIES:
        started = time.time()
        run = defs.resolve_job_def("adapters").execute_in_process(
            instance=instance, partition_key=category, raise_on_error=False
        )
        adapter = run.output_for_node("lora_adapter") if run.success else None
        print(
            f"adapter {category}: {'ok' if run.success else 'FAILED'} ({time.time() - started:.0f}s"
            + (f", val loss {adapter['val_loss']:.3f} vs base {adapter['base_val_loss']:.3f}" if adapter else "")
            + ")"
        )
        if not run.success:
            return 1
        checks += run.get_asset_check_evaluations()
        started = time.time()
        run = defs.resolve_job_def("evaluation").execute_in_process(
            instance=instance, partition_key=category, raise_on_error=False
        )
        if run.success:
            s = run.output_for_node("adapter_evaluation")["summary"]
            p = run.output_for_node("routing_policy")["policy"]
            print(
                f"evaluation {category}: ok ({time.time() - started:.0f}s, adapter {s['adapter_score']['value']:.3f} "
                f"base {s['base_score']['value']:.3f} claude {s['claude_score']['value']:.3f}, quality ratio "
                f"{s['quality_ratio']['value']:.2f} [{s['quality_ratio']['ci_low']:.2f}, {s['quality_ratio']['ci_high']:.2f}]; "
                f"routing {p['signal']} >= {p['threshold']}: local {p['expected_local_share']:.0%}, "
                f"ratio {p['expected_quality_ratio']:.2f})"
            )
        else:
            print(f"evaluation {category}: FAILED ({time.time() - started:.0f}s, run {run.run_id})")
            return 1
        checks += run.get_asset_check_evaluations()
        run = defs.resolve_job_def("registry").execute_in_process(
            instance=instance, partition_key=category, raise_on_error=False
        )
        registered = run.output_for_node("registered_adapter") if run.success else None
        gate = next((c for c in run.get_asset_check_evaluations() if c.check_name == "champion_gate"), None)
        if registered is None:
            print(f"registry {category}: FAILED (run {run.run_id})")
            return 1
        print(
            f"registry {category}: {registered['name']} v{registered['version']} candidate; "
            + ("promoted to champion" if gate and gate.passed else f"NOT promoted ({gate.description if gate else 'gate did not run'})")
        )
    run = defs.resolve_job_def("routing").execute_in_process(instance=instance, raise_on_error=False)
    if not run.success:
        print(f"routing policy: FAILED (run {run.run_id})")
        return 1
    print(f"routing policy: {run.output_for_node('routing_policies')['path']}")
    for check in checks:
        print(f"  check {check.asset_key.to_user_string()}:{check.check_name} {'passed' if check.passed else 'FAILED'}")
    return 0 if all(c.passed for c in checks) else 1
