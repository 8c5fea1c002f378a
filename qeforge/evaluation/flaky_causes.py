"""Flaky-test verdicts and root causes, normalized to the project's labels from other taxonomies.

The project's ten causes follow Luo et al.'s empirical study of flaky tests (FSE 2014), as the
fleet's flaky hunter reports them. Benchmarks label differently; the map below reads them:

| project label           | also accepted (case, spaces, `-` and `_` ignored)                                   |
|-------------------------|-------------------------------------------------------------------------------------|
| async-wait              | async wait, asynchronous wait, async, wait                                          |
| concurrency             | race condition, thread(ing), deadlock, atomicity violation                          |
| time                    | timing, time dependency, timezone, TD (IDoFT: time-dependent)                       |
| unordered-collections   | unordered collection, hash order, ID (IDoFT: implementation-dependent, from NonDex) |
| order-dependency        | test order dependency, order dependent, OD, OD-Vic, OD-Brit, victim, polluter,      |
|                         | brittle, NIO (IDoFT: non-idempotent outcome, a test polluting its own rerun)        |
| network                 | networking, remote service                                                          |
| randomness              | random                                                                              |
| io                      | I/O, file system, filesystem                                                        |
| resource-leak           | resource leak, leak                                                                 |
| platform                | platform dependency, OS, OSD (IDoFT: OS-dependent), environment                     |
| none                    | not flaky, non-flaky, deterministic, n/a (a deterministic test has no cause)        |

Anything else (Luo et al.'s floating point and too-restrictive range, IDoFT's NOD and UD, whose cause
is unknown) becomes `other`: a cause outside the project's list, which only `other` matches.
`names_a_cause` tells any of these causes (`other` ones included) from a verdict or noise: FlakyLens
labels a flaky test by its cause, so a label that names one means the test is flaky.
"""

from __future__ import annotations

import re

CAUSES: tuple[str, ...] = (
    "async-wait", "concurrency", "time", "unordered-collections", "order-dependency",
    "network", "randomness", "io", "resource-leak", "platform",
)
OTHER = "other"
NONE = "none"

_ALIASES = {
    "async-wait": ("async wait", "asynchronous wait", "async", "wait"),
    "concurrency": ("race condition", "race", "thread", "threading", "deadlock", "atomicity violation"),
    "time": ("timing", "time dependency", "time dependent", "timezone", "td"),
    "unordered-collections": ("unordered collection", "unordered collections", "hash order", "id",
                              "implementation dependent", "implementation dependency"),
    "order-dependency": ("test order dependency", "order dependency", "order dependent", "od", "od vic",
                         "od brit", "victim", "polluter", "brittle", "nio", "non idempotent outcome"),
    "network": ("networking", "remote service"),
    "randomness": ("random",),
    "io": ("i/o", "file system", "filesystem"),
    "resource-leak": ("resource leak", "leak"),
    "platform": ("platform dependency", "platform dependent", "os", "osd", "environment"),
    NONE: ("not flaky", "non flaky", "deterministic", "n/a", "no cause"),
}
_LOOKUP = {alias: label for label, aliases in _ALIASES.items() for alias in (label.replace("-", " "), *aliases)}
# Causes other taxonomies name that the project files under `other`: still causes of flakiness.
_OTHER_CAUSES = {"floating point", "floating point operations", "too restrictive range", "nod", "non deterministic",
                 "ud", "unknown dependency", "other"}


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9/]+", " ", text.lower()).split())


def normalize_cause(value) -> str | None:
    """A cause label from any taxonomy above -> the project's label; None (no cause) -> "none"."""
    if value is None:
        return NONE
    return _LOOKUP.get(_key(str(value)), OTHER)


def names_a_cause(value) -> bool:
    """Whether `value` names a cause of flakiness in some taxonomy (so the test is flaky)."""
    key = _key(str(value))
    return _LOOKUP.get(key, NONE) != NONE or key in _OTHER_CAUSES


def normalize_verdict(value) -> str | None:
    """"Flaky", "NonFlaky", "not flaky", True/False -> "flaky" / "not-flaky"; anything else unchanged."""
    if isinstance(value, bool):
        return "flaky" if value else "not-flaky"
    key = _key(str(value)).replace(" ", "")
    if key in ("flaky", "isflaky", "yes"):
        return "flaky"
    if key in ("notflaky", "nonflaky", "no", "deterministic", "stable"):
        return "not-flaky"
    return value
