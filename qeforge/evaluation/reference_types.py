"""What a metric's references must be, and the conversion every source's value goes through.

A spec declares each reference list's type (`reference_type: lines`, a scorer's `input_types`). A
source whose value does not convert is skipped with a reason (`rejected:not_a_list`, ...) and the
next source is tried: a producer that records `uncovered_lines` as a count (an integer) falls through
to the task's listing instead of crashing the metric.

| type          | accepts                                                  | rejects as                         |
|---------------|----------------------------------------------------------|------------------------------------|
| `lines`       | a list of line numbers (ints or digit strings, >= 1)     | not_a_list, not_line_numbers       |
| `verdict`     | flaky / not flaky in any spelling, or a flakiness cause  | not_a_verdict                      |
|               | (a cause implies `flaky`; `non-flaky`, `deterministic`   |                                    |
|               | imply `not-flaky`)                                       |                                    |
| `cause`       | a cause from any taxonomy in flaky_causes.py; null and   | not_a_label, a_verdict, unparsed   |
|               | `non-flaky` spellings are "none"                         |                                    |
| `text`        | a non-blank string                                       | not_a_string, blank                |
| `python`      | Python source that parses                                | not_a_string, not_python           |
| `module_name` | a Python identifier (the focal file is `<name>.py`)      | not_a_module_name                  |

Predictions (the answer being scored) get the same label mapping for `verdict` and `cause`, so both
sides speak the project's labels; anything unreadable stays as it is and scores as wrong.
"""

from __future__ import annotations

import keyword

from qeforge.evaluation.flaky_causes import NONE, names_a_cause, normalize_cause, normalize_verdict
from qeforge.evaluation.ground_truth import parses

UNPARSED = "unparsed"
# set_f1 stores lines as int64: a larger "line" would crash the batch, and no file has 2**31 lines.
MAX_LINE = 2**31 - 1


class Rejected(Exception):
    """A source's value is not of the declared type; `reason` is what the report counts."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = f"rejected:{reason}"


def lines(value) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise Rejected("not_a_list")
    out = []
    for item in value:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if type(item) is not int or not 1 <= item <= MAX_LINE:
            raise Rejected("not_line_numbers")
        out.append(item)
    return sorted(set(out))


def verdict(value) -> str:
    if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
        label = normalize_verdict(value)
        if label in ("flaky", "not-flaky"):
            return label
        if normalize_cause(value) == NONE:
            return "not-flaky"
        if names_a_cause(value):  # FlakyLens labels a flaky test by its cause: naming one says it is flaky
            return "flaky"
    raise Rejected("not_a_verdict")


def cause(value) -> str:
    if value is None:  # a deterministic test has no cause
        return NONE
    if not isinstance(value, str) or not value.strip():
        raise Rejected("not_a_label")
    if value.strip().lower() == UNPARSED:
        raise Rejected(UNPARSED)
    if normalize_verdict(value) == "flaky":  # "flaky" says whether, not why
        raise Rejected("a_verdict")
    return NONE if normalize_verdict(value) == "not-flaky" else normalize_cause(value)


def text(value) -> str:
    if not isinstance(value, str):
        raise Rejected("not_a_string")
    if not value.strip():
        raise Rejected("blank")
    return value


def python(value) -> str:
    if parses(text(value)) is None:
        raise Rejected("not_python")
    return value


def module_name(value) -> str:
    # The sandbox saves the focal code as `<module>.py`: one identifier, no package path.
    if not (isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)):
        raise Rejected("not_a_module_name")
    return value


TYPES = {"lines": lines, "verdict": verdict, "cause": cause, "text": text, "python": python, "module_name": module_name}
# The label types map predictions too; other predictions are the parser's output as it is.
_LABELS = {"verdict", "cause"}


def convert(type_name: str, value):
    """The value as `type_name`, or Rejected."""
    return TYPES[type_name](value)


def as_prediction(type_name: str, value):
    """A prediction in the references' terms: labels mapped, anything unreadable left to score as wrong."""
    if type_name not in _LABELS:
        return value
    try:
        return convert(type_name, value)
    except Rejected:
        return UNPARSED
