"""Output parsers named by the eval specs: free text in, the fields the metrics compare out.

Every parser takes the answer and the task it answers (`parse(output, task)`): a coverage answer may
name a line by its code, which only the task's listing turns into a number. Parsers are forgiving
about layout (case, bullets, "L12" vs "line 12") and strict about content: anything they cannot read
becomes an explicit "unparsed" value that scores as wrong.
"""

from __future__ import annotations

import re

from qeforge.evaluation.flaky_causes import normalize_cause, normalize_verdict
from qeforge.evaluation.ground_truth import annotated_listing, listing_lines

UNPARSED = "unparsed"
_NUMBER = re.compile(r"\d+")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _line_numbers(text: str) -> list[int]:
    return sorted({int(n) for n in _NUMBER.findall(text)})


def _lines_named_by_code(output: str, task: str) -> list[int]:
    """`raise ValueError("empty range")` is never reached -> the listing lines holding that code."""
    by_code: dict[str, list[int]] = {}
    for number, code in listing_lines(task).items():
        by_code.setdefault(" ".join(code.split()), []).append(number)
    named = {" ".join(span.split()) for span in _CODE_SPAN.findall(output)}
    return sorted({n for code in named for n in by_code.get(code, ())})


def parse_uncovered_lines(output: str, task: str = "") -> dict:
    """The lines an answer says are uncovered, by number, by code, or as an annotated listing.

    'Uncovered lines: 4, 7' -> [4, 7]; 'none' -> []; a `>`/`!` listing -> its `!` lines; backticked
    code that matches lines of the task's listing -> those lines; nothing readable -> [-1], a line
    no listing has."""
    match = re.search(r"uncovered lines?\s*[:=-]\s*(.*)", output, flags=re.IGNORECASE)
    if match:
        value = match.group(1).strip()
        if re.match(r"(none|no lines|nothing)\b", value, flags=re.IGNORECASE):
            return {"uncovered_lines": []}
        if _line_numbers(value.split("(")[0]):
            return {"uncovered_lines": _line_numbers(value.split("(")[0])}
    annotated = annotated_listing(output)
    if annotated:
        return {"uncovered_lines": [i for i, (marker, _) in enumerate(annotated, start=1) if marker == "!"]}
    named = _lines_named_by_code(output, task) if task else []
    return {"uncovered_lines": named or [-1]}  # -1: wrong against any listing, including an empty one


def parse_flaky_verdict(output: str, task: str = "") -> dict:
    """'Verdict: flaky / Cause: timing' -> verdict and cause, the cause in the project's labels.

    The cause may follow `Cause:`, `Root cause:` or `Category:`, in any taxonomy flaky_causes.py
    maps; a deterministic test's cause is "none"."""
    verdict = re.search(r"verdict\s*[:=-]\s*(not[- ]flaky|non[- ]?flaky|flaky)", output, flags=re.IGNORECASE)
    cause = re.search(r"(?:root cause|cause|category)\s*[:=-]\s*([^\n.;(]+)", output, flags=re.IGNORECASE)
    label = normalize_verdict(verdict.group(1)) if verdict else UNPARSED
    if cause:
        cause_label = normalize_cause(cause.group(1).strip())
    else:  # a deterministic test has no cause to name
        cause_label = "none" if label == "not-flaky" else UNPARSED
    return {"verdict": label, "cause": cause_label}


def parse_review_lines(output: str, task: str = "") -> dict:
    """The line numbers a review comment points at: 'Line 12: ...', 'lines 3, 5', 'L7'."""
    refs = re.findall(r"\b(?:lines?|L)\s*(\d+(?:\s*(?:,|and|-)\s*\d+)*)", output, flags=re.IGNORECASE)
    return {"lines": sorted({n for ref in refs for n in _line_numbers(ref)})}
