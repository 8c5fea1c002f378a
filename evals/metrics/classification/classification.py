"""Accuracy and macro-F1 over string labels, as a local evaluate module.

Macro-F1 averages per-class F1 over the classes present in the references or the
predictions, so always answering the majority class does not look good on an imbalanced set.
An unparseable prediction is its own (wrong) class.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy and macro-averaged F1 of predicted labels against reference labels."
_KWARGS = """
Args:
    predictions: list of str labels.
    references: list of str labels.
Returns:
    accuracy, macro_f1, correct_per_example (1/0).
"""


def macro_f1(predictions, references) -> float:
    classes = sorted(set(references) | set(predictions))
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(predictions, references))
        fp = sum(p == c and r != c for p, r in zip(predictions, references))
        fn = sum(p != c and r == c for p, r in zip(predictions, references))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        correct = [int(p == r) for p, r in zip(predictions, references)]
        return {
            "accuracy": sum(correct) / len(correct) if correct else 0.0,
            "macro_f1": macro_f1(predictions, references),
            "correct_per_example": correct,
        }
