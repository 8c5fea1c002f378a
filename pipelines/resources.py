"""Typed resources. Empty fields mean the embedded default under QEFORGE_HOME."""


import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from qeforge import store
from qeforge.categories import DEFAULT_MIX, OVERALL_TARGET
from qeforge.curation.gate import GateRules
from qeforge.evaluation.routing import Prices
from qeforge.locations import default_locations, is_uri, project_path
from qeforge.serving.app import Settings
from qeforge.serving.batching import DEFAULT_MAX_BATCH
from qeforge.curation.categorize import MIN_CATEGORY_PROBABILITY, MIN_CATEGORY_SIMILARITY
from qeforge.serving.escalation import DEFAULT_CLAUDE_MODEL
from qeforge.serving.recording import DEFAULT_REDACT_PATTERNS
from qeforge.serving.requests import DEFAULT_MAX_BODY_BYTES
from qeforge.training.adapters import latest_adapters

# Defaults come from the library's dataclasses, so a default changes in one place.
_GATE = GateRules()
_PRICES = Prices()


def embedded_default(location: str) -> str:
    """The embedded default for a `Locations` field: the one place the wiring asks `default_locations()`.
    Read on each call, not at import, so a QEFORGE_HOME set later (the main job's, a test's scratch home)
    holds for the resources built at import."""
    return getattr(default_locations(), location)


def transient_mlflow_error(error: BaseException) -> bool:
    """A tracking server that is down or restarting, as opposed to a bad request or a bug."""
    text = str(error)
    return isinstance(error, ConnectionError) or any(
        marker in text for marker in ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                                      "TEMPORARILY_UNAVAILABLE", "503 Server Error", "502 Server Error")
    )


@contextmanager
def mlflow_retries(max_retries: int = 3, seconds_to_wait: float = 30):
    """Retry the step when MLflow is unreachable (MLflow already retried each request with backoff);
    anything else fails at once with its own message."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - classified, then re-raised or turned into a retry
        if transient_mlflow_error(e):
            raise dg.RetryRequested(max_retries=max_retries, seconds_to_wait=seconds_to_wait) from e
        raise


class LanceDBResource(dg.ConfigurableResource):
    """The ReasoningBank store: a local directory by default, any LanceDB URI (s3://, gs://, az://) by config."""

    uri: str = Field(default="", description="LanceDB URI or path; empty: <QEFORGE_HOME>/lancedb")
    storage_options: dict[str, str] = Field(default_factory=dict, description="object-store credentials/options")

    def resolved_uri(self) -> str:
        uri = self.uri or embedded_default("lancedb_uri")
        return uri if is_uri(uri) else str(project_path(uri))

    def connect(self):
        return store.connect(self.resolved_uri(), self.storage_options)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry: local sqlite and artifacts by default, any tracking URI by config."""

    tracking_uri: str = Field(default="", description="empty: sqlite:///<QEFORGE_HOME>/mlflow/mlflow.db")
    artifact_root: str = Field(default="", description="artifact location for new experiments; empty: local")

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or embedded_default("mlflow_tracking_uri")

    def resolved_artifact_root(self) -> str | None:
        """The field, else $QEFORGE_MLFLOW_ARTIFACT_ROOT (e.g. s3://bucket/mlflow beside a SQL backend), else
        local files beside a sqlite store; a tracking server otherwise decides where artifacts go."""
        root = self.artifact_root or embedded_default("mlflow_artifact_root")
        if is_uri(root):
            return root
        if self.artifact_root or self.resolved_tracking_uri().startswith("sqlite:"):
            return Path(project_path(root)).as_uri()
        return None

    def experiment_id(self, name: str) -> str:
        import mlflow

        client = mlflow.MlflowClient(self.resolved_tracking_uri())
        found = client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=self._artifact_location(name))

    def _artifact_location(self, name: str) -> str | None:
        root = self.resolved_artifact_root()
        return f"{root.rstrip('/')}/{name}" if root else None


class DatasetStoreResource(dg.ConfigurableResource):
    """Where versioned Hugging Face datasets are written."""

    root: str = Field(default="", description="empty: <QEFORGE_HOME>/datasets")

    def path(self) -> Path:
        return project_path(self.root or embedded_default("datasets_dir"))


class CurationSettings(dg.ConfigurableResource):
    """Curation gates and targets; defaults follow the fleet's own promotion rules and the plan."""

    min_quality: float = _GATE.min_quality
    min_confidence: float = _GATE.min_confidence
    min_usage_count: int = _GATE.min_usage_count
    domain_categories: dict[str, str | None] = Field(
        default_factory=lambda: dict(_GATE.domain_categories),
        description='producer domain -> category, "by-task" (task text decides), or null (out of scope); '
        "domains not named go to the classifier",
    )
    category_task_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(_GATE.task_patterns), description='category -> regex on the task, for "by-task" domains'
    )
    dedup_threshold: float = Field(default=0.95, description="cosine at or above which two tasks are duplicates")
    leakage_threshold: float = Field(
        default=0.90, description="cosine at or above which rows must share a split (below dedup, for margin)"
    )
    target_mix: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_MIX),
        description="traffic mix: weights the overall quality ratio and shapes the optional multi-task dataset",
    )
    per_category_cap: int | None = Field(
        default=None, description="most rows (the best) a category's dataset keeps; None: every row it has"
    )
    multitask_dataset: bool = Field(
        default=False, description="also write one multi-task dataset (all categories) at the target mix"
    )
    split_ratios: list[float] = Field(default_factory=lambda: [0.70, 0.15, 0.15])
    max_quarantine_rate: float = Field(default=0.10, description="asset check bound on quarantined / read")
    min_category_probability: float = Field(default=MIN_CATEGORY_PROBABILITY, description=
                                            'an unlabeled row is "none of the four" below this classifier probability')
    min_category_similarity: float = Field(default=MIN_CATEGORY_SIMILARITY, description=
                                           "... or below this cosine to its category's nearest labeled row")
    embedding_batch_size: int = 64
    seed: int = 0

    def gate(self) -> GateRules:
        return GateRules(
            self.min_quality, self.min_confidence, self.min_usage_count, self.domain_categories, self.category_task_patterns
        )


class AutomationSettings(dg.ConfigurableResource):
    """When curation and the traffic report run unattended. Empty fields take their variable:
    QEFORGE_REFRESH_CRON, QEFORGE_NEW_TRAJECTORIES_THRESHOLD."""

    refresh_cron: str = Field(default="", description="weekly_refresh's cron (UTC), fixed when the code location "
                              'loads; empty: $QEFORGE_REFRESH_CRON or "0 3 * * 1" (Monday 03:00)')
    new_trajectories_threshold: int = Field(default=0, description="eligible trajectories a category gains since the "
                                            "current dataset version before the sensor requests curation; "
                                            "0: $QEFORGE_NEW_TRAJECTORIES_THRESHOLD or 50")

    traffic_cron: str = Field(default="0 * * * *", description="hourly_traffic's cron (UTC): recorded exchanges into "
                              "the bank (so the sensor sees them) and the traffic report")

    def resolved_refresh_cron(self) -> str:
        return self.refresh_cron or os.environ.get("QEFORGE_REFRESH_CRON") or "0 3 * * 1"

    def resolved_new_trajectories_threshold(self) -> int:
        return self.new_trajectories_threshold or int(os.environ.get("QEFORGE_NEW_TRAJECTORIES_THRESHOLD") or 50)


class TrainingSettings(dg.ConfigurableResource):
    """Which base model and recipes train the adapters. Production vs embedded default is this config."""

    profile: str = Field(default="tiny", description='"tiny": embedded CPU default (a 1.6M Phi-3 built here); '
                         '"smol": SmolLM2-135M-Instruct on CPU; "phi-4": microsoft/phi-4 on a GPU')
    base_model: str = Field(default="", description="hub id, local directory or .gguf file (package:<module>/<file> "
                            "for one inside an installed wheel); empty: the profile's default")
    recipe_overrides: dict[str, Any] = Field(default_factory=dict, description="SFTConfig/ModelConfig fields to override")
    base_pretrain_steps: int = Field(default=300, description="tiny profile: pretraining steps of the base model")
    force: bool = Field(default=False, description="retrain even when dataset, recipe and base are unchanged")
    models_dir: str = Field(default="", description="base models and adapters; empty: <QEFORGE_HOME>/models")

    def models_path(self) -> Path:
        return project_path(self.models_dir or embedded_default("models_dir"))

    def adapters_path(self) -> Path:
        """<models>/adapters/<category>/<dataset version>/ (qeforge.training.adapters)."""
        return self.models_path() / "adapters"

    def latest_adapters(self) -> dict[str, dict]:
        return latest_adapters(self.adapters_path())


class EvaluationSettings(dg.ConfigurableResource):
    """Evaluation and routing: prices for the cost model, batch sizes, the bootstrap seed."""

    claude_input_per_mtok: float = Field(default=_PRICES.claude_input_per_mtok, description="USD per million input tokens")
    claude_output_per_mtok: float = Field(default=_PRICES.claude_output_per_mtok, description="USD per million output tokens")
    local_per_hour: float = Field(default=_PRICES.local_per_hour, description="USD per hour for the local serving machine")
    local_requests_per_hour: float = Field(default=_PRICES.local_requests_per_hour,
                                           description="local throughput, to spread the hourly cost")
    overall_target: float = Field(default=OVERALL_TARGET, description="the fleet's quality ratio bar, traffic-weighted")
    generation_batch_size: int = Field(default=16, description="rows generated at a time (continuous batching); "
                                       "on 2 CPU cores 16 rows cost ~1.5x a step of 8 (bench/lean_decoder.py)")
    sandbox_workers: int = Field(default=0, description="parallel sandboxed test runs; 0: one per CPU core")
    seed: int = 0
    evals_dir: str = Field(default="", description="evaluations and routing_policies/; empty: <QEFORGE_HOME>/evals")

    def prices(self) -> Prices:
        return Prices(self.claude_input_per_mtok, self.claude_output_per_mtok, self.local_per_hour, self.local_requests_per_hour)

    def evals_path(self) -> Path:
        return project_path(self.evals_dir or embedded_default("evals_dir"))

    def policies_path(self) -> Path:
        return self.evals_path() / "routing_policies"


class ServingSettings(dg.ConfigurableResource):
    """The gateway (`qeforge serve`): where it listens, how it batches, when Claude answers instead.

    Empty fields take their variable: QEFORGE_API_KEY, QEFORGE_MAX_BATCH, QEFORGE_MAX_BODY_BYTES,
    QEFORGE_CLAUDE_MODEL, QEFORGE_FALLBACK. Escalation needs ANTHROPIC_API_KEY (and honours
    ANTHROPIC_BASE_URL), read by the anthropic SDK."""

    host: str = Field(default="127.0.0.1", description="bind address; loopback unless you mean to expose it")
    port: int = 8000
    api_key: str = Field(default="", description="require it ('Authorization: Bearer' or 'x-api-key'); empty: $QEFORGE_API_KEY")
    backend: str = Field(default="torch", description='"torch" (PyTorch, the model\'s own dtype), "torch-int8" (its lean '
                         'decoder on weight-only int8 weights: ~1.8x the tokens/s for one client on a CPU, its answers '
                         'measured in the README) or "onnx"')
    max_batch: int = Field(default=0, description="rows per generation batch, 1 serializes; 0: $QEFORGE_MAX_BATCH or 16")
    max_body_bytes: int = Field(default=0, description="larger bodies get a 413; 0: $QEFORGE_MAX_BODY_BYTES or 4 MiB")
    escalate: bool = Field(default=True, description="ask Claude when the local side cannot answer well (needs ANTHROPIC_API_KEY)")
    claude_model: str = Field(default="", description="the Claude model asked for a name that is not claude-*; "
                              f"empty: $QEFORGE_CLAUDE_MODEL or {DEFAULT_CLAUDE_MODEL}")
    fallback: str = Field(default="", description='without Claude: "local" answers locally and marks it, "decline" '
                          'answers 503 with the reason; empty: $QEFORGE_FALLBACK or "local"')
    model_aliases: dict[str, str] = Field(default_factory=dict, description="model name -> category it pins")
    min_category_probability: float = Field(default=MIN_CATEGORY_PROBABILITY,
                                            description='below it the classifier says "none" and the call escalates')
    min_category_similarity: float = Field(default=MIN_CATEGORY_SIMILARITY,
                                           description='"none" too when the nearest known-good row of the '
                                           "category is less similar than this (cosine)")
    registry_cache_dir: str = Field(default="", description="adapters fetched from a remote registry's artifacts; "
                                    "empty: <QEFORGE_HOME>/serving/registry_cache")
    record_exchanges: bool = Field(default=True, description="record every exchange (request, answer, route) in the "
                                   "LanceDB `exchanges` table, off the request path")
    redact_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT_PATTERNS),
                                       description="regexes whose matches become [REDACTED] in every recorded text field "
                                       "(default: sk-... and sk-ant-... keys, AKIA... AWS keys, bearer tokens, password=...)")

    def generation_weights(self) -> str:
        """The weights local answers are generated with ("model" or "int8"). Evaluation generates with
        the same, so a tuned routing threshold means the same there as in the gateway."""
        from qeforge.serving.backends import generation_weights

        return generation_weights(self.backend)

    def registry_cache_path(self) -> Path:
        return project_path(self.registry_cache_dir or Path(embedded_default("home")) / "serving" / "registry_cache")

    def settings(self, source, *, models_dir: Path, classifier_path: Path | None, db) -> Settings:
        """The gateway's settings, every field resolved here once."""
        env = os.environ
        escalation = None
        if self.escalate and env.get("ANTHROPIC_API_KEY"):
            from qeforge.serving.escalation import ClaudeEscalation

            escalation = ClaudeEscalation()
        return Settings(
            source=source, onnx_cache_dir=models_dir / "onnx", host=self.host, port=self.port,
            api_key=self.api_key or env.get("QEFORGE_API_KEY") or None, backend=self.backend,
            classifier_path=classifier_path, db=db,
            max_batch=self.max_batch or int(env.get("QEFORGE_MAX_BATCH") or DEFAULT_MAX_BATCH),
            max_body_bytes=self.max_body_bytes or int(env.get("QEFORGE_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES),
            escalation=escalation, claude_model=self.claude_model or env.get("QEFORGE_CLAUDE_MODEL") or DEFAULT_CLAUDE_MODEL,
            fallback=self.fallback or env.get("QEFORGE_FALLBACK") or "local", model_aliases=dict(self.model_aliases),
            min_category_probability=self.min_category_probability,
            min_category_similarity=self.min_category_similarity, record_exchanges=self.record_exchanges,
            redact_patterns=tuple(self.redact_patterns))


# The configured resources: Definitions, the CLI and the main job all read these, so a path or
# option set here holds for `dagster dev`, `qeforge datasets show` and `qeforge serve` alike.
RESOURCES = {
    "lancedb": LanceDBResource(),
    "mlflow": MLflowResource(),
    "dataset_store": DatasetStoreResource(),
    "curation": CurationSettings(),
    "automation": AutomationSettings(),
    "training": TrainingSettings(),
    "evaluation": EvaluationSettings(),
    "serving": ServingSettings(),
}
