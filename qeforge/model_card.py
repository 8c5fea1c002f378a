"""The model card on each registered adapter version: what a reviewer reads in the MLflow UI."""

from __future__ import annotations

import json

from qeforge.evaluation.sandbox import WEAK_ISOLATION


def _num(value, spec=".3f") -> str:
    return "n/a" if value is None else (value if isinstance(value, str) else format(value, spec))


def build_card(category: str, *, training: dict, summary: dict, routing: dict, policy: dict, dataset: dict, tags: dict) -> str:
    ratio = summary["quality_ratio"]
    confirmed = routing["confirmed"]
    verdict = "meets" if summary["meets_target"] else "**does not meet**"
    recipe = training.get("recipe", {})
    rows = [f"| {w} | {_num(summary[f'{w}_score']['value'])} | [{_num(summary[f'{w}_score']['ci_low'])}, "
            f"{_num(summary[f'{w}_score']['ci_high'])}] |" for w in ("base", "adapter", "claude")]
    detail = [f"| {col} | " + " | ".join(_num(by.get(w)) for w in ("base", "adapter", "claude")) + " |"
              for col, by in summary.get("detail", {}).items()]
    lines = [
        f"# qeforge-{category}: LoRA adapter on `{training.get('base_model')}`",
        "",
        f"**Quality vs Claude: {_num(ratio['value'], '.2f')}** (95% CI {_num(ratio['ci_low'], '.2f')}–{_num(ratio['ci_high'], '.2f')}, "
        f"{summary['n_paired']} test examples with a Claude reference); this {verdict} the {summary['target_ratio']:.0%} target. "
        f"Routed at threshold {_num(policy['threshold'])} on `{policy['signal']}`: {confirmed['local_share']:.0%} of requests "
        f"stay local at {confirmed['quality_ratio']:.2f} of Claude quality, saving ${confirmed['savings_per_1k']:.3f} per 1k requests.",
        "",
        "## Data",
        f"- dataset version `{dataset['version']}` (hash `{training.get('dataset_hash', '')[:16]}`): "
        f"{training.get('n_train')} train / {training.get('n_validation')} validation / {summary['n_eval']} test rows",
        "- curated from the fleet's ReasoningBank: validated, quality-gated, exact and semantic near-duplicates removed, "
        "no near-duplicate across splits",
        "",
        "## Training",
        f"- trl SFT, LoRA r={recipe.get('lora_r')} alpha={recipe.get('lora_alpha')} on {recipe.get('lora_target_modules')}, "
        f"lr {recipe.get('learning_rate')}, {recipe.get('num_train_epochs')} epochs, max_length {recipe.get('max_length')}",
        f"- val loss {_num(training.get('val_loss'))} vs base {_num(training.get('base_val_loss'))}; "
        f"{training.get('trainable_params')} trainable params; adapter {int(training.get('adapter_size_bytes', 0)) / 1e6:.2f} MB",
        f"- git commit `{tags.get('git_commit', 'unknown')}`, recipe hash `{tags.get('recipe_hash', '')}`",
        *([f"- base dequantized from `{training['base_gguf']}` (sha256 `{training['base_gguf_sha256']}`)"]
          if training.get("base_gguf") else []),
        "",
        f"## Evaluation (`{summary.get('spec_digest')}`, eval spec v{summary.get('spec_version')}, {summary['eval_split']} split)",
        "| model | score | 95% CI |",
        "|---|---|---|",
        *rows,
        "",
        *(["| metric | base | adapter | claude |", "|---|---|---|---|", *detail, ""] if detail else []),
        "## Routing policy",
        f"- signal `{policy['signal']}` (AUROC on validation: "
        + ", ".join(f"{k} {_num(v, '.2f')}" for k, v in routing["signal_auroc"].items()) + ")",
        f"- threshold {_num(policy['threshold'])}: confirmed on test, local share {confirmed['local_share']:.0%}, "
        f"quality ratio {confirmed['quality_ratio']:.2f} [{_num(confirmed['quality_ratio_low'], '.2f')}, {_num(confirmed['quality_ratio_high'], '.2f')}]",
        f"- CPT(50%) {_num(routing['cpt']['50'], '.2f')}, CPT(80%) {_num(routing['cpt']['80'], '.2f')}, "
        f"CPT(95%) {_num(routing['cpt']['95'], '.2f')}, APGR {_num(routing['apgr'], '.2f')}",
        "",
        "## Plots (run artifacts)",
        "- `loss_curve.png`, `eval/scores.png`, `routing/quality_cost.png`, `routing/pgr_curve.png`; per-example table `eval/examples.json`",
        "",
        "## Known limits",
        f"- {summary['n_paired']} paired test examples: the CI is wide; treat differences inside it as noise.",
        "- Claude's score is its recorded answer's score; Claude answers are not re-sampled.",
    ]
    if summary.get("sandbox_isolation") == WEAK_ISOLATION:
        lines.append(f"- Scores of generated tests were measured with {WEAK_ISOLATION}.")
    if not summary["meets_target"]:
        lines.append(f"- Below the {summary['target_ratio']:.0%} target: keep the routing threshold so low-confidence requests escalate.")
    if str(training.get("base_model", "")).endswith("tiny-phi3"):
        lines.append("- Trained on the embedded tiny Phi-3 (about 1.6M parameters) for the demo; production uses microsoft/phi-4.")
    lines += ["", "<details><summary>tags</summary>", "", "```json", json.dumps(tags, indent=2, sort_keys=True), "```", "</details>"]
    return "\n".join(lines) + "\n"
