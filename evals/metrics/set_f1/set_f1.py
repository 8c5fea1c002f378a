"""Precision/recall/F1 of a predicted set of line numbers against the true set, as a local evaluate module.

Both sets empty counts as a perfect answer (F1 1): "no uncovered lines" is a correct,
checkable claim. One side empty and the other not scores 0.
"""

import datasets
import evaluate

_DESCRIPTION = "Set precision, recall and F1 per example (e.g. uncovered line numbers named vs the coverage listing)."
_KWARGS = """
Args:
    predictions: list of lists of int.
    references: list of lists of int.
Returns:
    precision, recall, f1: means over examples; f1_per_example, precision_per_example, recall_per_example.
"""


def set_prf(predicted, true) -> tuple[float, float, float]:
    p, t = set(predicted), set(true)
    if not p and not t:
        return 1.0, 1.0, 1.0
    hits = len(p & t)
    precision = hits / len(p) if p else 0.0
    recall = hits / len(t) if t else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SetF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Sequence(datasets.Value("int64"))}
            ),
        )

    def _compute(self, predictions, references):
        rows = [set_prf(p, r) for p, r in zip(predictions, references)]
        n = max(len(rows), 1)
        out = {name: sum(r[i] for r in rows) / n for i, name in enumerate(("precision", "recall", "f1"))}
        for i, name in enumerate(("precision", "recall", "f1")):
            out[f"{name}_per_example"] = [r[i] for r in rows]
        return out
