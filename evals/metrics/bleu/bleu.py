"""Sentence BLEU-4 per example with add-one smoothing, as a local evaluate module (no Hub, no sacrebleu).

Papineni et al. 2002 with Lin & Och 2004 smoothing: n-gram precisions for n>1 get +1 on
numerator and denominator, so one short comment without a matching 4-gram scores > 0.
"""

import math
import re
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = "Smoothed sentence-level BLEU-4 between each prediction and its reference (whitespace/punctuation tokens)."
_KWARGS = """
Args:
    predictions: list of str.
    references: list of str.
    max_order: largest n-gram (default 4).
Returns:
    bleu: mean sentence BLEU; bleu_per_example: one score per pair, in [0, 1].
"""
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(prediction: str, reference: str, max_order: int = 4) -> float:
    hyp, ref = _TOKEN.findall(prediction.lower()), _TOKEN.findall(reference.lower())
    if not hyp or not ref:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_order + 1):
        overlap = sum((_ngrams(hyp, n) & _ngrams(ref, n)).values())
        total = max(len(hyp) - n + 1, 0)
        smooth = 0 if n == 1 else 1
        if overlap + smooth == 0 or total + smooth == 0:
            return 0.0
        log_precision += math.log((overlap + smooth) / (total + smooth)) / max_order
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_precision)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Papineni et al., 2002. BLEU: a Method for Automatic Evaluation of Machine Translation.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, max_order=4):
        per_example = [sentence_bleu(p, r, max_order) for p, r in zip(predictions, references)]
        return {"bleu": sum(per_example) / len(per_example) if per_example else 0.0, "bleu_per_example": per_example}
