"""Flaky-detection tasks: pytest tests with a ground-truth flaky/not-flaky label.

Flaky tests come from the seven root causes the fleet's flaky hunter reports;
the not-flaky ones deliberately include look-alikes (seeded randomness, an
injected clock, sorted set output) so a model cannot key on `random` or
`time` alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qeforge.demo.test_generation import Example

CAUSES: tuple[str, ...] = ("async-wait", "concurrency", "order-dependency", "time", "randomness", "network", "resource-leak")


@dataclass(frozen=True)
class FlakyTemplate:
    cause: str | None  # None: the test is deterministic
    code: str
    why: str


# __THING__ is a domain noun, __N__ a small constant; both vary per row.
FLAKY: tuple[FlakyTemplate, ...] = (
    FlakyTemplate("async-wait", '''
import threading
import time

def test___THING___is_processed_in_background():
    results = []
    worker = threading.Thread(target=lambda: (time.sleep(0.05), results.append("__THING__")))
    worker.start()
    time.sleep(0.06)
    assert results == ["__THING__"]
''', "the assertion races a background thread with a fixed 60 ms sleep; on a loaded CI runner the worker's 50 ms sleep plus scheduling overruns the margin. Join the thread (or wait on an Event) instead of sleeping."),
    FlakyTemplate("async-wait", '''
import asyncio

async def publish___THING__(queue):
    await asyncio.sleep(0.01)
    await queue.put("__THING__-created")

def test___THING___event_published():
    async def scenario():
        queue = asyncio.Queue()
        asyncio.create_task(publish___THING__(queue))
        await asyncio.sleep(0.011)
        return queue.qsize()
    assert asyncio.run(scenario()) == 1
''', "it waits a hard-coded 11 ms for a task that needs 10 ms plus event-loop scheduling, so it passes or fails depending on timer resolution. Await the queue (`await asyncio.wait_for(queue.get(), 1)`) instead."),
    FlakyTemplate("concurrency", '''
import threading

counter = {"__THING__s": 0}

def record___THING__():
    current = counter["__THING__s"]
    counter["__THING__s"] = current + 1

def test_concurrent___THING___counter():
    threads = [threading.Thread(target=record___THING__) for _ in range(__N__)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter["__THING__s"] == __N__
''', "`record___THING__` does an unsynchronised read-modify-write on shared state, so concurrent threads can lose updates; the result depends on thread interleaving. Guard the update with a `threading.Lock`."),
    FlakyTemplate("concurrency", '''
from concurrent.futures import ThreadPoolExecutor

def test___THING___batch_results_order():
    def work(i):
        return f"__THING__-{i}"
    done = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(work, i) for i in range(__N__)]:
            future.add_done_callback(lambda f: done.append(f.result()))
    assert done == [f"__THING__-{i}" for i in range(__N__)]
''', "done-callbacks fire in completion order, which depends on how the pool schedules its workers; the list order is not guaranteed. Compare `sorted(done)` or collect `future.result()` in submission order."),
    FlakyTemplate("order-dependency", '''
_registry = []

def test_register___THING__():
    _registry.append("__THING__")
    assert len(_registry) == 1

def test___THING___registry_is_empty_at_start():
    assert _registry == []
''', "both tests share the module-level `_registry`; the second only passes if it runs before the first (and the first only on its first run), so random ordering (pytest-randomly, xdist) breaks it. Use a fixture that creates a fresh registry per test."),
    FlakyTemplate("order-dependency", '''
import os

def test_configure___THING___env():
    os.environ["__THING_UPPER___MODE"] = "strict"
    assert os.environ["__THING_UPPER___MODE"] == "strict"

def test___THING___default_mode():
    assert os.environ.get("__THING_UPPER___MODE", "lenient") == "lenient"
''', "the first test writes `__THING_UPPER___MODE` into the process environment and never restores it, so the second test's result depends on execution order. Use `monkeypatch.setenv`, which is undone after each test."),
    FlakyTemplate("time", '''
from datetime import datetime, timedelta

def __THING___expires_at(created):
    return created + timedelta(seconds=__N__)

def test___THING___not_expired_yet():
    created = datetime.now()
    expiry = __THING___expires_at(created)
    assert (expiry - datetime.now()).seconds == __N__
''', "two separate `datetime.now()` calls are compared; any delay between them makes the remaining time __N__ - epsilon, which `.seconds` truncates to __N__ - 1. Freeze the clock or pass `now` explicitly."),
    FlakyTemplate("time", '''
import time

def test___THING___report_is_fast():
    start = time.time()
    report = sorted(str(i) for i in range(__N__ * 20000))
    elapsed = time.time() - start
    assert report
    assert elapsed < 0.05
''', "it asserts a wall-clock budget of 50 ms on a CPU-bound loop; timing depends on machine load and CI runner speed. Move performance checks to a benchmark job with tolerances."),
    FlakyTemplate("time", '''
from datetime import date

def is_weekend___THING__(day=None):
    day = day or date.today()
    return day.weekday() >= 5

def test___THING___scheduled_on_weekday():
    assert not is_weekend___THING__()
''', "the result depends on the day the suite runs (`date.today()`), so it fails every Saturday and Sunday. Pass an explicit date in the test."),
    FlakyTemplate("randomness", '''
import random

def pick___THING__(candidates):
    return random.choice(candidates)

def test_pick___THING___prefers_first():
    candidates = ["__THING__-a", "__THING__-b", "__THING__-c"]
    assert pick___THING__(candidates) == "__THING__-a"
''', "`random.choice` is unseeded, so the test passes about one run in three. Seed a `random.Random` instance and inject it, or assert membership instead of a specific pick."),
    FlakyTemplate("randomness", '''
import random

def test___THING___sample_has_no_duplicates():
    ids = [random.randint(1, __N__ * 100) for _ in range(__N__ * 5)]
    assert len(set(ids)) == len(ids)
''', "drawing with replacement from a small range produces collisions with substantial probability (birthday problem), and nothing is seeded. Use `random.sample` or a seeded generator."),
    FlakyTemplate("network", '''
import urllib.request

def test___THING___service_health():
    with urllib.request.urlopen("https://__THING__-api.example.com/health", timeout=2) as response:
        assert response.status == 200
''', "it calls a real external endpoint with a 2 s timeout; DNS, network partitions or the remote service's availability decide the outcome. Stub the HTTP client or use a local fake server."),
    FlakyTemplate("network", '''
import socket

def test___THING___port_is_free():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 80__N__0))
    sock.listen()
    sock.close()
''', "it binds a fixed port; when another process or a parallel xdist worker holds it the bind fails with EADDRINUSE. Bind port 0 and let the OS pick."),
    FlakyTemplate("resource-leak", '''
import tempfile

_handles = []

def open___THING___log():
    handle = tempfile.TemporaryFile()
    _handles.append(handle)
    return handle

def test___THING___log_writes():
    for _ in range(__N__ * 300):
        open___THING___log().write(b"__THING__")
    assert len(_handles) == __N__ * 300
''', "file handles are never closed and are kept alive in a module list; with a low `ulimit -n` (common on CI) it hits 'Too many open files', and it depends on what else the session has open. Close handles (context manager) or use `tmp_path`."),
    FlakyTemplate("resource-leak", '''
import threading

def start___THING___watcher(stop):
    thread = threading.Thread(target=stop.wait, daemon=False)
    thread.start()
    return thread

def test___THING___watcher_count():
    stop = threading.Event()
    start___THING___watcher(stop)
    assert threading.active_count() == 2
''', "the watcher thread is never stopped, so threads leak across tests and `active_count()` depends on what earlier tests left running. Set the event and join the thread in a fixture teardown."),
)

NOT_FLAKY: tuple[FlakyTemplate, ...] = (
    FlakyTemplate(None, '''
import random

def shuffle___THING__s(items, seed):
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    return items

def test_shuffle___THING__s_is_reproducible():
    items = [f"__THING__-{i}" for i in range(__N__)]
    assert shuffle___THING__s(items, 42) == shuffle___THING__s(items, 42)
    assert sorted(shuffle___THING__s(items, 7)) == sorted(items)
''', "the randomness is confined to a `random.Random` seeded by the test, so every run produces the same permutation, and the second assertion is order-independent anyway."),
    FlakyTemplate(None, '''
from datetime import datetime, timedelta

def __THING___expires_at(created, ttl_seconds=__N__):
    return created + timedelta(seconds=ttl_seconds)

def test___THING___expiry_uses_ttl():
    created = datetime(2024, 1, 1, 12, 0, 0)
    assert __THING___expires_at(created) == datetime(2024, 1, 1, 12, 0, __N__)
''', "the clock is not read at all: the test passes a fixed datetime, so the result is fully deterministic."),
    FlakyTemplate(None, '''
import threading

def test___THING___counter_with_lock():
    lock = threading.Lock()
    total = {"n": 0}
    def add():
        for _ in range(1000):
            with lock:
                total["n"] += 1
    threads = [threading.Thread(target=add) for _ in range(__N__)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert total["n"] == __N__ * 1000
''', "every update happens under a lock and all threads are joined before the assertion, so the interleaving cannot change the result."),
    FlakyTemplate(None, '''
def test___THING___tags_are_unique():
    tags = {"__THING__", "urgent", "__THING__", "backlog"}
    assert sorted(tags) == sorted(["__THING__", "urgent", "backlog"])
''', "set iteration order is not relied upon: both sides are sorted before comparing, so hash randomisation cannot affect the outcome."),
    FlakyTemplate(None, '''
def test___THING___uses_fixture_registry(tmp_path):
    registry = tmp_path / "__THING__s.txt"
    registry.write_text("__THING__-1\\n")
    assert registry.read_text().splitlines() == ["__THING__-1"]
''', "state lives in pytest's per-test `tmp_path`, so there is no shared state between tests and no order dependence."),
    FlakyTemplate(None, '''
def test___THING___env_is_isolated(monkeypatch):
    monkeypatch.setenv("__THING_UPPER___MODE", "strict")
    import os
    assert os.environ["__THING_UPPER___MODE"] == "strict"
''', "`monkeypatch.setenv` restores the environment after the test, so it neither leaks into nor depends on other tests."),
    FlakyTemplate(None, '''
import asyncio

def test___THING___event_published():
    async def scenario():
        queue = asyncio.Queue()
        async def publish():
            await asyncio.sleep(0.01)
            await queue.put("__THING__-created")
        asyncio.create_task(publish())
        return await asyncio.wait_for(queue.get(), timeout=5)
    assert asyncio.run(scenario()) == "__THING__-created"
''', "it awaits the queue directly with a generous 5 s timeout instead of sleeping a fixed amount, so scheduling delays do not change the result."),
    FlakyTemplate(None, '''
class Fake__THING_TITLE__Client:
    def __init__(self):
        self.calls = []
    def health(self):
        self.calls.append("health")
        return 200

def test___THING___service_health_with_fake():
    client = Fake__THING_TITLE__Client()
    assert client.health() == 200
    assert client.calls == ["health"]
''', "the network client is replaced by an in-memory fake, so no real I/O takes place."),
    FlakyTemplate(None, '''
def total___THING__s(quantities):
    return sum(q for q in quantities if q > 0)

def test_total___THING__s_ignores_negatives():
    assert total___THING__s([__N__, -1, 2]) == __N__ + 2
''', "pure function over literal inputs: no clock, randomness, I/O or shared state."),
    FlakyTemplate(None, '''
import time

def test___THING___timer_uses_fake_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    start = time.monotonic()
    now[0] += __N__
    assert time.monotonic() - start == __N__
''', "the clock is monkeypatched to a controlled value, so elapsed time is exact and independent of machine speed."),
)

THINGS = ("order", "invoice", "session", "report", "user", "payment", "ticket", "cart", "upload", "job")

PROMPTS = (
    "Is the following pytest test flaky? Answer with a verdict and, if flaky, the root cause.\n\n```python\n{code}```",
    "Analyse this test for flakiness. It failed {fails} of the last 50 CI runs.\n\n```python\n{code}```",
    "Classify the test below as flaky or not-flaky and explain why.\n\n```python\n{code}```",
    "Flaky-test triage: does this test produce non-deterministic results?\n\n```python\n{code}```",
)


def _fill(text: str, thing: str, n: int) -> str:
    return (
        text.replace("__THING_UPPER__", thing.upper())
        .replace("__THING_TITLE__", thing.title())
        .replace("__THING__", thing)
        .replace("__N__", str(n))
    )


def _verdict(label: str, cause: str | None, why: str) -> str:
    cause_line = f"Cause: {cause}\n" if cause else "Cause: none\n"
    return f"Verdict: {label}\n{cause_line}Explanation: {why[0].upper()}{why[1:]}"


def make_example(spec_seed: int, style_seed: int) -> Example:
    spec, style = random.Random(spec_seed), random.Random(style_seed)
    flaky = spec.random() < 0.6
    template = spec.choice(FLAKY if flaky else NOT_FLAKY)
    n = spec.choice((3, 4, 5, 8))
    thing = style.choice(THINGS)
    code = _fill(template.code, thing, n).lstrip("\n")
    why = _fill(template.why, thing, n)
    label = "flaky" if flaky else "not-flaky"
    fails = style.randint(2, 9) if flaky else style.randint(0, 1)
    task = style.choice(PROMPTS).format(code=code, fails=fails)

    wrong_cause = spec.choice([c for c in CAUSES if c != template.cause])
    if flaky:
        failure = _verdict("not-flaky", None, "the test has no obvious source of non-determinism; the CI failures are probably infrastructure noise.")
        partial = _verdict("flaky", wrong_cause, f"the outcome looks environment dependent ({wrong_cause.replace('-', ' ')}), though the exact mechanism is unclear.")
    else:
        failure = _verdict("flaky", wrong_cause, f"the test looks like it depends on {wrong_cause.replace('-', ' ')}, which can vary between runs.")
        partial = "Verdict: not-flaky\nExplanation: Probably deterministic."
    return Example(
        task=task,
        metadata={"label": label, "cause": template.cause},
        outputs={
            "success": _verdict(label, template.cause, why),
            "partial": partial,
            "failure": failure,
            "skipped": "Skipped: test history unavailable, no rerun data to compare against.",
        },
    )
