"""The main job: demo data -> the whole asset graph -> a simulated fleet through the gateway -> one more
cycle on its recorded traffic -> the local share before and after.

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


def _category_broken(run) -> bool:
    """A failed category run, unless what failed is the champion gate: a candidate the gate keeps out of
    `champion` is a valid outcome, not a failed job."""
    return not run.success and not any(c.check_name == "champion_gate" and not c.passed
                                       for c in run.get_asset_check_evaluations())


# Simulated fleet: tasks per category per pass. 12 x 4 + 2 preflights = 50 calls, each pass a minute or
# less on the tiny models; enough that a category's share moves in steps of 1/12.
FLEET_TASKS = 12


def _category_datasets(path: str, categories) -> dict[str, list]:
    """(split, id) pairs per category of one dataset version: what a category's adapter learns from."""
    from datasets import load_from_disk

    return {c: sorted((s, i) for s, d in load_from_disk(f"{path}/{c}").items() for i in d["id"]) for c in categories}


def _fleet_pass(settings, calls, caller: str) -> dict[str, float] | None:
    """Start the gateway on the current champions, send `calls` as `caller`, stop it (which flushes the
    recorder). The local share per category of what was sent; None when nothing could be served."""
    from collections import defaultdict

    from qeforge.fleet import send
    from qeforge.serving.app import create_app
    from qeforge.serving.background import BackgroundServer

    try:
        app = create_app(settings)
    except (FileNotFoundError, ValueError) as err:  # nothing promoted yet, or champions on different bases
        print(f"fleet: nothing to serve: {err}")
        return None
    with BackgroundServer(app) as server:
        routes = send(server.url, calls, caller)
    local, reasons = defaultdict(list), defaultdict(lambda: defaultdict(int))
    for call, route in zip(calls, routes):
        local[call.category].append(route["decision"] in ("local", "local_fallback"))
        reasons[call.category][route["reason"]] += 1
    for category in local:
        shown = ", ".join(f"{r} {n}" for r, n in sorted(reasons[category].items(), key=lambda kv: -kv[1]))
        print(f"  {caller} {category}: {sum(local[category])}/{len(local[category])} local ({shown})")
    return {c: sum(v) / len(v) for c, v in local.items()} | {"all": sum(map(sum, local.values())) / len(calls)}


def run_fleet_loop(defs, instance, db, training_config: dict, categories, *, seed: int = 0) -> bool:
    """One turn of the loop the product exists for, on a simulated fleet (qeforge/fleet.py) and a
    stand-in Claude on loopback: the fleet's calls through the gateway on the champions (recorded),
    the recorded exchanges curated into a new dataset version, the categories whose data changed
    retrained, evaluated and registered, the gateway started again on the new champions, and fresh
    calls of the same kind sent, with the pass-one prompts repeated. Prints the local share before
    and after; `qeforge traffic --by caller` shows the same figures from the recorded exchanges.

    The base model stays the one cycle one trained on (curation runs without `base_model`): the
    champions of unchanged categories keep serving beside the new ones, as with Phi-4 in production."""
    import dataclasses

    import anthropic
    import dagster as dg

    from pipelines.resources import RESOURCES
    from qeforge.curation.export import current_classifier_path, current_version
    from qeforge.fleet import fleet_calls, stand_in_claude
    from qeforge.serving.background import BackgroundServer
    from qeforge.serving.escalation import ClaudeEscalation
    from qeforge.serving.registry_source import RegistrySource
    from qeforge.traffic import read_exchanges, traffic_report

    before_calls, after_calls = fleet_calls(FLEET_TASKS, seed=seed), fleet_calls(FLEET_TASKS, seed=seed + 1)
    claude = BackgroundServer(stand_in_claude(before_calls + after_calls)).start()
    escalation = ClaudeEscalation(anthropic.Anthropic(api_key="stand-in", base_url=claude.url, max_retries=0))

    def settings():
        datasets = RESOURCES["dataset_store"].path()
        registry = RegistrySource(RESOURCES["mlflow"].resolved_tracking_uri(), cache_dir=RESOURCES["serving"].registry_cache_path())
        resolved = RESOURCES["serving"].settings(registry, models_dir=RESOURCES["training"].models_path(),
                                                 classifier_path=current_classifier_path(datasets), db=db)
        return dataclasses.replace(resolved, escalation=escalation)

    try:
        before = _fleet_pass(settings(), before_calls, "simulated-fleet/before")
        if before is None:
            return False
        previous = current_version(RESOURCES["dataset_store"].path())
        curation = list(dg.AssetSelection.groups("curation").resolve(defs.resolve_asset_graph()))
        run = defs.resolve_job_def("curation").execute_in_process(instance=instance, run_config=training_config,
                                                                  asset_selection=curation, raise_on_error=False)
        if not run.success:
            print(f"fleet: curation of the recorded exchanges FAILED (run {run.run_id})")
            return False
        imported = run.asset_materializations_for_node("recorded_exchanges")[0].metadata
        current = current_version(RESOURCES["dataset_store"].path())
        print(f"fleet: {imported['trajectories'].value} of {imported['exchanges_read'].value} recorded exchanges "
              f"became trajectories; dataset version {previous[0]} -> {current[0]}")
        old, new = _category_datasets(previous[1], categories), _category_datasets(current[1], categories)
        for category in [c for c in categories if old[c] != new[c]]:
            started = time.time()
            run = defs.resolve_job_def("category").execute_in_process(
                instance=instance, partition_key=category, run_config=training_config, raise_on_error=False)
            print(f"[{time.time() - started:.0f}s] retrained " + _category_line(category, run), flush=True)
            if _category_broken(run):
                print(f"fleet: retraining {category} FAILED (run {run.run_id})")
                return False
        if not defs.resolve_job_def("routing").execute_in_process(instance=instance, raise_on_error=False).success:
            print("fleet: routing policy FAILED")
            return False
        after = _fleet_pass(settings(), after_calls, "simulated-fleet/after")
        repeat = _fleet_pass(settings(), before_calls, "simulated-fleet/repeat")
    finally:
        claude.stop()
    if after is None or repeat is None:
        return False
    run = defs.resolve_job_def("traffic").execute_in_process(instance=instance, raise_on_error=False)
    print(f"fleet: traffic report {'materialized (fleet_traffic, with its plot)' if run.success else 'FAILED'}")
    report = traffic_report(read_exchanges(db), RESOURCES["evaluation"].prices(), window=None, by=("caller",))
    agreement = {r["category"]: r["agreement_with_claude"] for r in report["total"] if r["caller"] == "simulated-fleet/repeat"}
    print("fleet: local share before -> after one cycle (new tasks; the pass-one prompts repeated, with agreement with Claude)")
    for category in [*categories, "none", "all"]:
        if category in before:
            score = agreement.get(category)
            print(f"  {category:<18} {before[category]:>5.0%} -> {after.get(category, 0):>5.0%}   repeated "
                  f"{repeat.get(category, 0):>5.0%}" + (f", ROUGE-L vs Claude {score:.2f}" if score is not None else ""))
    return True


def run_main_job(
    *, demo_rows: int = 2000, seed: int = 0, skip_demo: bool = False, fleet_loop: bool = True,
    profile: str = "tiny", categories: tuple[str, ...] | None = None,
) -> int:
    """Demo data, then the curation, category and routing jobs; `profile` picks TrainingSettings.profile
    (base model and recipes) for this run only, as Dagster run config; `categories` trains, evaluates,
    registers and serves only these (default: all four). `fleet_loop`: then one cycle on the simulated
    fleet's recorded traffic (run_fleet_loop)."""
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
        checks += [c for c in run.get_asset_check_evaluations() if c.check_name != "champion_gate"]
        if _category_broken(run):
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
    if fleet_loop:
        started = time.time()
        served = run_fleet_loop(defs, instance, db, training_config, categories or CATEGORIES, seed=seed)
        print(f"[{time.time() - started:.0f}s] simulated fleet loop: {'ok' if served else 'FAILED'}", flush=True)
        if not served:
            return 1
    # A model that does not (yet) beat its base is a result the report and the registry show, not a
    # broken job; every other failed check (schema, leakage, splits, sandbox, ...) fails the job.
    broken = [c for c in checks if not c.passed and c.check_name not in MODEL_QUALITY_VERDICTS]
    return 1 if broken else 0
