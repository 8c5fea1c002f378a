"""ROUGE-L F-measure per example (rouge_score), as a local evaluate module: the Hub's `rouge` is unreachable."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L (longest common subsequence) F-measure between each prediction and its reference."
_KWARGS = """
Args:
    predictions: list of str.
    references: list of str.
Returns:
    rougeL: mean F-measure; rougeL_per_example: one F-measure per pair.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        per_example = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
        return {"rougeL": sum(per_example) / len(per_example) if per_example else 0.0, "rougeL_per_example": per_example}
