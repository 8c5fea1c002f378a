"""Output parsers named by the eval specs: free text in, the fields the metrics compare out.

Parsers are forgiving about layout (case, bullets, "L12" vs "line 12") and strict about
content: anything they cannot read becomes an explicit "unparsed" value that scores as wrong.
"""

from __future__ import annotations

import re

UNPARSED = "unparsed"
_NUMBER = re.compile(r"\d+")


def _line_numbers(text: str) -> list[int]:
    return sorted({int(n) for n in _NUMBER.findall(text)})


def parse_uncovered_lines(output: str) -> dict:
    """'Uncovered lines: 4, 7' -> [4, 7]; 'none' -> []; no such line -> [-1], a line no listing has."""
    match = re.search(r"uncovered lines?\s*[:=-]\s*(.*)", output, flags=re.IGNORECASE)
    if not match:
        return {"uncovered_lines": [-1]}  # an impossible line: wrong against any listing, including an empty one
    value = match.group(1).strip()
    if re.match(r"(none|no lines|nothing)\b", value, flags=re.IGNORECASE):
        return {"uncovered_lines": []}
    return {"uncovered_lines": _line_numbers(value.split("(")[0])}


def parse_flaky_verdict(output: str) -> dict:
    """'Verdict: flaky / Cause: timing' -> verdict and cause labels ('none' for a deterministic test)."""
    verdict = re.search(r"verdict\s*[:=-]\s*(not[- ]flaky|flaky)", output, flags=re.IGNORECASE)
    cause = re.search(r"cause\s*[:=-]\s*([a-z][a-z-]*)", output, flags=re.IGNORECASE)
    return {
        "verdict": verdict.group(1).lower().replace(" ", "-") if verdict else UNPARSED,
        "cause": cause.group(1).lower() if cause else UNPARSED,
    }


def parse_review_lines(output: str) -> dict:
    """The line numbers a review comment points at: 'Line 12: ...', 'lines 3, 5', 'L7'."""
    refs = re.findall(r"\b(?:lines?|L)\s*(\d+(?:\s*(?:,|and|-)\s*\d+)*)", output, flags=re.IGNORECASE)
    return {"lines": sorted({n for ref in refs for n in _line_numbers(ref)})}
