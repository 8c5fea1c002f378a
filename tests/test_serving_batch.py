"""The batching engine and the one signal code path: batched == one at a time, stop strings, dropped
clients, the shim's signals == the evaluation's, and an ONNX model that fails parity is refused."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace

import httpx
import pytest

from test_serving import MAX, PROMPT, SERVED, artefacts, make_engine, policy, serve  # noqa: F401 (fixtures)
from tiny_models import chat_call

PROMPTS = ["def add(a, b):\n    return a + b", "def f(x):\n    return x * 3",
           "def is_even(n):\n    return n % 2 == 0  # used by the parity check of the billing job"]


def conversation(category: str, prompt: str) -> list[dict]:
    from qeforge.categories import SYSTEM_PROMPTS

    return [{"role": "system", "content": SYSTEM_PROMPTS[category]}, {"role": "user", "content": prompt}]


def wait_for(condition, what: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def serial(artefacts):
    return make_engine(artefacts, policy(), max_batch=1)


def test_one_batch_of_mixed_adapters_answers_like_one_at_a_time(artefacts, serial):
    from qeforge.serving.batching import GenerationRequest

    # Three adapters, three prompt lengths (so rows are left-padded), different max_tokens.
    cases = [(SERVED[i % 3], PROMPTS[i % 3], MAX + i % 4) for i in range(12)]
    expected = [serial.complete(chat_call(f"qeforge-{c}", conversation(c, p), max_tokens=n)) for c, p, n in cases]
    assert len({e.text for e in expected}) >= len(SERVED) and {e.batch_rows for e in expected} == {1}

    batched = make_engine(artefacts, policy(), max_batch=16, max_wait_s=60)
    state = batched._state
    with batched.batcher.arriving():  # holds the batch open: the loop waits while a request is arriving
        futures = [batched.batcher.submit(GenerationRequest(c, state.prompt_ids(conversation(c, p)), n, (), state))
                   for c, p, n in cases]
    got = [f.result(120) for f in futures]
    assert [g.batch_rows for g in got] == [len(cases)] * len(cases)  # one batch, so every row saw the others
    for (c, p, n), e, g in zip(cases, expected, got):
        assert (g.text, g.finish_reason, len(g.tokens)) == (e.text, e.choices[0].finish, e.completion_tokens), (c, p, n)
        assert len(g.tokens) <= n
        assert g.mean_logprob == pytest.approx(e.confidence, abs=1e-4)


def test_only_the_generation_thread_drives_openmp_workers(serial, monkeypatch):
    """threads.py: the generation thread claims its intra-op threads (else it would take the count last
    set anywhere, here the caller's), and loading a snapshot runs on one, the caller's count restored."""
    import torch

    from qeforge.serving.batching import Batcher, GenerationRequest

    caller = torch.get_num_threads()
    if caller == 1:
        pytest.skip("one core: one intra-op thread everywhere, nothing to tell apart")
    load, during_load = serial.source.load, []
    monkeypatch.setattr(serial.source, "load", lambda: (during_load.append(torch.get_num_threads()), load())[1])
    serial.reload()
    assert during_load == [1] and torch.get_num_threads() == caller

    state = serial._state
    forward, during_steps = state.backend.forward, []
    monkeypatch.setattr(state.backend, "forward", lambda *a: (during_steps.append(torch.get_num_threads()), forward(*a))[1])
    ids = state.prompt_ids(conversation(SERVED[0], PROMPTS[0]))
    Batcher(intra_op_threads=1).submit(GenerationRequest(SERVED[0], ids, 3, (), state)).result(60)
    assert during_steps and set(during_steps) == {1} and torch.get_num_threads() == caller


def test_requests_that_join_a_running_batch_answer_like_one_at_a_time(artefacts, serial):
    """Rows join after 1 and 3 steps (their caches left-padded and stacked under the running ones),
    and rows leave at different steps (the cache columns no row uses are cut). Driven step by step
    from the test thread; the engine's own generation thread sits idle on its empty queue."""
    from qeforge.serving.batching import GenerationRequest

    eng = make_engine(artefacts, policy())
    state, batcher = eng._state, eng.batcher
    cases = [(SERVED[0], PROMPTS[2], 4), (SERVED[1], PROMPTS[0], 6), (SERVED[2], PROMPTS[1], MAX),
             (SERVED[0], PROMPTS[0], 24), (SERVED[1], PROMPTS[2], 3)]
    requests = [GenerationRequest(c, state.prompt_ids(conversation(c, p)), n, (), state) for c, p, n in cases]
    running = batcher._prefill(requests[:1])
    for joining_after, joiners in ((1, requests[1:3]), (2, requests[3:])):
        for _ in range(joining_after):
            assert batcher._step(running)
        batcher._join(running, batcher._prefill(joiners))
    while batcher._step(running):
        pass
    for (c, p, n), r in zip(cases, requests):
        got, want = r.future.result(0), serial.complete(chat_call(f"qeforge-{c}", conversation(c, p), max_tokens=n))
        assert (got.text, got.finish_reason, len(got.tokens)) == (want.text, want.choices[0].finish, want.completion_tokens)
        assert got.mean_logprob == pytest.approx(want.confidence, abs=1e-4)
    assert [r.batch_rows for r in requests[:3]] == [1, 3, 3] and requests[3].batch_rows == requests[4].batch_rows >= 4


def test_stop_strings_end_the_answer_before_them(serial):
    c = SERVED[0]
    full = serial.complete(chat_call(f"qeforge-{c}", PROMPT, max_tokens=MAX)).text
    # two characters from the middle on, neither of them whitespace (the answer is stripped at a stop)
    stop = next(full[i:i + 2] for i in range(len(full) // 2, len(full) - 1) if not any(ch.isspace() for ch in full[i:i + 2]))
    r = serial.complete(chat_call(f"qeforge-{c}", PROMPT, max_tokens=MAX, stop=["never appears", stop]))
    assert (r.text, r.choices[0].finish, r.choices[0].stop_sequence) == (full[:full.find(stop)].strip(), "stop", stop)
    assert r.completion_tokens <= MAX


def test_a_cancelled_request_is_dropped_and_its_batch_still_answers(artefacts, serial):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from qeforge.serving.engine import ServingError

    eng = make_engine(artefacts, policy(), max_wait_s=60)
    gone = threading.Event()
    gone.set()
    with ThreadPoolExecutor(2) as pool, eng.batcher.arriving():
        ok = pool.submit(eng.complete, chat_call(f"qeforge-{SERVED[1]}", PROMPT, max_tokens=MAX))
        dropped = pool.submit(eng.complete, chat_call(f"qeforge-{SERVED[0]}", PROMPT, max_tokens=MAX), gone)
        wait_for(lambda: eng.batcher.waiting == 2, "both requests to queue")
    with pytest.raises(ServingError) as err:
        dropped.result(60)
    assert (err.value.status, err.value.code) == (499, "client_closed")
    assert ok.result(60).text == serial.complete(chat_call(f"qeforge-{SERVED[1]}", PROMPT, max_tokens=MAX)).text


def test_a_client_that_disconnects_has_its_request_dropped(artefacts, serve):
    import json

    eng = make_engine(artefacts, policy(), max_wait_s=60)
    s = serve(eng)
    body = json.dumps({"model": f"qeforge-{SERVED[0]}", "messages": PROMPT, "max_tokens": MAX}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    with eng.batcher.arriving():  # the request queues and waits while this is held
        client = socket.create_connection(("127.0.0.1", s.port))
        client.sendall(head.encode() + body)
        wait_for(lambda: eng.batcher.waiting == 1, "the request to queue")
        client.close()
        wait_for(lambda: all(r.cancelled.is_set() for r in eng.batcher._backlog), "the shim to see the disconnect")
    metric = 'qeforge_requests_total{category="none",decision="cancelled",protocol="openai",reason="client_closed",status="499"} 1.0'
    wait_for(lambda: metric in httpx.get(f"{s.url}/metrics").text, "the dropped request to be counted")
    r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": f"qeforge-{SERVED[0]}", "messages": PROMPT,
                                                          "max_tokens": MAX})
    assert r.status_code == 200 and r.json()["qeforge"]["batch_rows"] == 1


def test_shim_signal_equals_the_evaluations(artefacts, serve, tmp_path):
    """The same prompt and adapter: mean_logprob from evaluation.generate, knn_similarity from the
    evaluation's embedding (sentence-transformers) vs the shim's (ONNX Runtime), over HTTP."""
    from qeforge import store
    from qeforge.embedding import embed_texts
    from qeforge.evaluation.generate import generate, load_adapter_model
    from qeforge.signals import KnownGood, knn_similarity

    c = SERVED[1]
    convo = conversation(c, PROMPTS[2])
    model, tokenizer = load_adapter_model(artefacts["base"], artefacts["adapters"][c])
    evaluated = generate(model, tokenizer, [convo], max_new_tokens=MAX)[0]

    db = store.connect(str(tmp_path / "lancedb"))
    known = ["def is_odd(n):\n    return n % 2 == 1", "def test_add():\n    assert add(1, 2) == 3", PROMPTS[0]]
    store.write_known_good(db, ["a", "b", "c"], [c, c, SERVED[0]], [0.9] * 3, embed_texts(known), "v1")
    evaluated_knn = float(knn_similarity(KnownGood(db), c, [convo], embed_texts)[0])
    assert -1 < evaluated_knn < 0.999  # a real similarity, not the no-rows -1 or an exact copy

    body = {"model": f"qeforge-{c}", "messages": convo, "max_tokens": MAX}
    logprob_shim = serve(make_engine(artefacts, policy()))
    route = httpx.post(f"{logprob_shim.url}/v1/chat/completions", json=body, timeout=60).json()
    assert route["choices"][0]["message"]["content"] == evaluated.text
    assert route["usage"]["completion_tokens"] == evaluated.output_tokens
    assert route["qeforge"]["confidence"] == pytest.approx(evaluated.mean_logprob, abs=1e-5)

    knn_shim = serve(make_engine(artefacts, policy("knn_similarity", "-inf"), db=db, onnx_cache_dir=tmp_path / "onnx"))
    route = httpx.post(f"{knn_shim.url}/v1/chat/completions", json=body, timeout=120).json()["qeforge"]
    assert route["signal"] == "knn_similarity" and route["confidence"] == pytest.approx(evaluated_knn, abs=1e-5)


class FixedSource:
    """An AdapterSource serving one given snapshot (its ONNX dirs included)."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def load(self):
        return self.snapshot


def test_onnx_backend_refuses_an_adapter_whose_model_fails_parity(artefacts, serial, serve, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    from qeforge.serving.engine import Engine
    from qeforge.serving.onnx_runtime import export_merged
    from qeforge.serving.source import DirectorySource

    good, stale = SERVED[0], SERVED[1]
    onnx_dir = export_merged(artefacts["base"], artefacts["adapters"][good], tmp_path / "onnx" / good)
    snap = DirectorySource(artefacts["base"], {c: artefacts["adapters"][c] for c in (good, stale)}, policy()).load()
    # `stale` is pointed at the graph of another adapter: what a stale or mixed-up export dir looks like.
    snap = replace(snap, adapters={c: replace(a, onnx_dir=onnx_dir) for c, a in snap.adapters.items()})
    with caplog.at_level(logging.ERROR, logger="qeforge.serving.backends"):
        eng = Engine(FixedSource(snap), backend="onnx", onnx_cache_dir=tmp_path / "cache")
    assert [r.message for r in caplog.records if stale in r.message and "does not match PyTorch" in r.message]
    assert good not in eng.refused

    s = serve(eng)
    health = httpx.get(f"{s.url}/health").json()
    assert health["status"] == "degraded" and health["adapters"] == {good: "v1"}
    assert set(health["refused"]) == {stale} and "does not match PyTorch" in health["refused"][stale]
    assert {m["id"] for m in httpx.get(f"{s.url}/v1/models").json()["data"]} == {f"qeforge-{good}", "qeforge"}
    r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": f"qeforge-{stale}", "messages": PROMPT, "max_tokens": MAX})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_local_model"  # nothing local, no Claude: declined
    r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": f"qeforge-{good}", "messages": PROMPT, "max_tokens": MAX})
    assert r.json()["choices"][0]["message"]["content"] == serial.complete(chat_call(f"qeforge-{good}", PROMPT, max_tokens=MAX)).text
