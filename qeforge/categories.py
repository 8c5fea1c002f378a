"""The four QE task categories: the one list everything else derives from.

Dagster partitions, registry names and serving routes are built from CATEGORIES. Tables that hold
something per category (recipes/, evals/tasks/, curation.domains, the demo data, serving.smoke's
prompts) name the categories as their keys; nothing else spells them out.
"""

CATEGORIES: tuple[str, ...] = (
    "test-generation",
    "coverage-analysis",
    "flaky-detection",
    "code-review",
)

# Share of each category in the fleet's traffic (the plan's 40/30/20/10). It weights the overall quality
# ratio and shapes the optional multi-task dataset; each category's own adapter trains on all its rows.
DEFAULT_MIX: dict[str, float] = {
    "test-generation": 0.40,
    "coverage-analysis": 0.30,
    "flaky-detection": 0.20,
    "code-review": 0.10,
}

# The plan's bar for the whole fleet: the traffic-weighted quality ratio vs Claude at >= 95%. Each
# category's own bar is its eval spec's `targets.quality_ratio` (evals/tasks/<category>.yaml).
OVERALL_TARGET = 0.95

# The system turn of every chat example, so the model knows which job it is doing.
SYSTEM_PROMPTS: dict[str, str] = {
    "test-generation": "You are a QE agent. Write pytest tests for the given Python code.",
    "coverage-analysis": "You are a QE agent. List the lines the given tests leave uncovered.",
    "flaky-detection": "You are a QE agent. Decide whether the given test is flaky and why.",
    "code-review": "You are a QE agent. Review the given diff and comment on its problems.",
}

# "unknown": nothing observed yet, e.g. an agentic-qe pattern that was never used (its
# success_rate column then reads 0.0 by default, which is not a failure).
OUTCOMES: tuple[str, ...] = ("success", "failure", "partial", "skipped", "unknown")


# The registered model and the served model name of a category: qeforge-<category>.
MODEL_PREFIX = "qeforge-"


def registered_model_name(category: str) -> str:
    return MODEL_PREFIX + category
