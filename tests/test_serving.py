"""The serving shim: OpenAI client against a real uvicorn server, routing, adapter isolation, reload, errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from servers import BackgroundServer
from tiny_models import build_base, chat_call, random_adapter

pytestmark = pytest.mark.slow  # builds tiny models and serves them

SERVED = ("test-generation", "coverage-analysis", "flaky-detection")
PROMPT = [{"role": "user", "content": "def add(a, b):\n    return a + b"}]
MAX = 8


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = build_base(root)
    adapters = {c: random_adapter(base, root / "adapters" / c / "v1", 100 + i) for i, c in enumerate(SERVED)}
    v2 = random_adapter(base, root / "adapters" / SERVED[0] / "v2", 999)
    return {"root": root, "base": str(base), "adapters": adapters, "v2": v2}


def make_engine(artefacts, policy=None, **kw):
    from qeforge.serving.engine import Engine
    from qeforge.serving.source import DirectorySource

    kw.setdefault("onnx_cache_dir", artefacts["root"] / "onnx")
    return Engine(DirectorySource(artefacts["base"], artefacts["adapters"], policy), **kw)


def policy(signal="mean_logprob", threshold="-inf", version="p-test"):
    return {"version": version, "categories": {c: {"signal": signal, "threshold": threshold} for c in SERVED}}


@pytest.fixture(scope="session")
def engine(artefacts):
    return make_engine(artefacts, policy())


@pytest.fixture(scope="session")
def expected(engine):
    """The engine's direct single-request answer per category: distinct, so a mix-up would show."""
    out = {c: engine.complete(chat_call(f"qeforge-{c}", PROMPT, max_tokens=MAX)).text for c in SERVED}
    assert len(set(out.values())) == len(SERVED), out
    return out


@pytest.fixture
def serve():
    from qeforge.serving.app import create_app

    servers = []

    def start(engine, **kw):
        servers.append(BackgroundServer(create_app(engine, **kw), startup_timeout_s=30).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(engine):
    from qeforge.serving.app import create_app

    s = BackgroundServer(create_app(engine), startup_timeout_s=30).start()
    yield s
    s.stop()


def openai_client(url, key="unused"):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_openai_client_gets_each_categorys_answer_and_route(server, expected):
    client = openai_client(server.url)
    ids = {m.id for m in client.models.list()}
    assert ids == {f"qeforge-{c}" for c in SERVED} | {"qeforge"}
    for c in SERVED:
        raw = client.chat.completions.with_raw_response.create(model=f"qeforge-{c}", messages=PROMPT, max_tokens=MAX)
        resp = raw.parse()
        assert resp.choices[0].message.content == expected[c]
        assert resp.choices[0].finish_reason in ("stop", "length") and resp.model == f"qeforge-{c}"
        assert resp.usage.completion_tokens <= MAX and resp.usage.total_tokens > resp.usage.completion_tokens
        route = resp.model_extra["qeforge"]
        # An answer cut at max_tokens is "truncated": with no Claude configured the local answer is
        # returned and marked (fallback "local"); one that ended by itself is confident (threshold -inf).
        cut = resp.choices[0].finish_reason == "length"
        fields = ("answered_by", "decision", "reason", "category", "adapter_version", "signal", "threshold", "policy_version")
        assert {k: route[k] for k in fields} == {
            "answered_by": f"qeforge-{c}@v1", "decision": "local_fallback" if cut else "local",
            "reason": "truncated" if cut else "confident", "category": c, "adapter_version": "v1",
            "signal": "mean_logprob", "threshold": "-inf", "policy_version": "p-test"}
        assert isinstance(route["confidence"], float) and route["batch_rows"] >= 1 and route["timings_ms"]["queue"] >= 0
        header = raw.headers["X-QEForge-Route"]
        assert header.startswith(f"answered_by=qeforge-{c}@v1; decision={route['decision']}; reason={route['reason']}; category={c};")
    # auto model with an explicit category; max_completion_tokens is honoured like max_tokens
    resp = client.chat.completions.create(model="qeforge", messages=PROMPT, max_completion_tokens=MAX,
                                          metadata={"category": SERVED[1]})
    assert resp.choices[0].message.content == expected[SERVED[1]]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["adapters"] == {c: "v1" for c in SERVED} and health["backend"] == "torch"
    assert health["generation"] == "lean"  # the tiny Phi-3 runs on the lean decoder (test_decoder.py)
    assert "base_model" not in health  # no API key configured, so nobody is shown host paths
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("qeforge_requests_total", "qeforge_request_latency_seconds", "qeforge_generation_batch_rows",
                 "qeforge_generation_queue_seconds", "qeforge_routing_decision_seconds", "qeforge_generated_tokens_total"):
        assert name in metrics


def test_concurrent_mixed_requests_never_cross_adapters(server, expected):
    cats = [SERVED[i % len(SERVED)] for i in range(24)]

    with httpx.Client(base_url=server.url, timeout=120) as http:
        def ask(c):
            r = http.post("/v1/chat/completions", json={"model": f"qeforge-{c}", "messages": PROMPT, "max_tokens": MAX})
            return c, r.json()

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(ask, cats))
    for c, body in results:
        assert body["qeforge"]["category"] == c
        assert body["choices"][0]["message"]["content"] == expected[c]


class FakeClaude:
    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    def complete(self, call, model):
        from qeforge.serving.chat import Choice, text_block

        self.calls.append((call, model))
        if self.fail:
            raise ConnectionError("claude is down")
        return [Choice([text_block("claude says hi")], "stop")], {"input_tokens": 5, "output_tokens": 3}


def stop_inside(text: str) -> str:
    """A stop string that first occurs inside `text`, past its start."""
    for i in range(1, len(text)):
        if text[i].strip() and text.find(text[i]) == i:
            return text[i]
    raise AssertionError(f"no stop string inside {text!r}")


def test_routing_decisions(artefacts, expected):
    from qeforge.serving.engine import Declined

    # Random tiny adapters rarely end by themselves: a stop string from inside the 8-token answer
    # ends this one before max_tokens, so it is a finished answer the threshold alone decides on.
    c = SERVED[0]
    ask = chat_call(f"qeforge-{c}", PROMPT, max_tokens=MAX, stop=[stop_inside(expected[c])])
    answer = make_engine(artefacts, policy()).complete(ask)
    assert answer.choices[0].finish == "stop" and answer.decision == "local"
    local = make_engine(artefacts, policy(threshold="-inf"), escalation=FakeClaude())
    r = local.complete(ask)
    assert (r.decision, r.reason, r.text) == ("local", "confident", answer.text) and not local.escalation.calls

    fake = FakeClaude()
    r = make_engine(artefacts, policy(threshold="inf"), escalation=fake).complete(ask)
    assert (r.decision, r.reason, r.text, r.local_tokens, r.answered_by) == (
        "escalated", "not_confident", "claude says hi", 0, "claude-sonnet-4-5")
    call, model = fake.calls[0]
    assert call.messages == PROMPT and call.max_tokens == MAX and model == "claude-sonnet-4-5"

    r = make_engine(artefacts, policy(threshold="inf")).complete(ask)  # no Claude: marked local answer
    assert (r.decision, r.reason, r.text) == ("local_fallback", "not_confident", answer.text)
    with pytest.raises(Declined) as declined:
        make_engine(artefacts, policy(threshold="inf"), fallback="decline").complete(ask)
    assert (declined.value.status, declined.value.code) == (503, "not_confident")

    r = make_engine(artefacts, policy(threshold="inf"), escalation=FakeClaude(fail=True)).complete(ask)
    assert (r.decision, r.reason, r.text, r.escalation_error) == ("local_fallback", "not_confident", answer.text,
                                                                  "ConnectionError")
    # a finite mean_logprob threshold above any confidence: generated locally, then escalated
    fake = FakeClaude()
    r = make_engine(artefacts, policy(threshold=1.0), escalation=fake).complete(ask)
    assert r.decision == "escalated" and r.confidence < 1.0 and r.local_tokens > 0 and len(fake.calls) == 1
    # cut at max_tokens before it finished: truncated, escalated; a claude-* name is the model asked for
    fake = FakeClaude()
    r = make_engine(artefacts, policy(), escalation=fake).complete(chat_call("claude-opus-4-7", PROMPT, max_tokens=2,
                                                                            metadata={"category": c}))
    assert (r.decision, r.reason, r.answered_by, r.category) == ("escalated", "truncated", "claude-opus-4-7", c)


def test_escalation_forwards_the_clients_own_request(monkeypatch):
    from types import SimpleNamespace

    from anthropic.types import TextBlock

    from pipelines.resources import ServingSettings
    from qeforge.serving.escalation import ClaudeEscalation

    calls = []

    def create(**kw):
        calls.append(kw)
        return SimpleNamespace(content=[TextBlock(type="text", text="a"), TextBlock(type="text", text="b")],
                               stop_reason="end_turn", stop_sequence=None, usage=SimpleNamespace(input_tokens=3, output_tokens=2))

    fake = SimpleNamespace(messages=SimpleNamespace(create=create))
    call = chat_call("gpt-x", [{"role": "system", "content": "sys"}, *PROMPT], max_tokens=7, temperature=0.3, stop=["END"])
    choices, usage = ClaudeEscalation(fake).complete(call, "claude-test")
    assert (choices[0].text, choices[0].finish, usage) == ("ab", "stop", {"input_tokens": 3, "output_tokens": 2})
    assert calls == [{"model": "claude-test", "max_tokens": 7, "messages": PROMPT, "system": "sys",
                      "stop_sequences": ["END"], "extra_body": {"temperature": 0.3}}]
    source, models = SimpleNamespace(), Path("/tmp/unused")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert ServingSettings().settings(source, models_dir=models, classifier_path=None, db=None).escalation is None
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert isinstance(ServingSettings().settings(source, models_dir=models, classifier_path=None, db=None).escalation,
                      ClaudeEscalation)
    assert ServingSettings(escalate=False).settings(source, models_dir=models, classifier_path=None, db=None).escalation is None


def test_knn_signal_and_escalation_over_http(artefacts, expected, serve, tmp_path):
    import numpy as np

    from qeforge import store

    db = store.connect(str(tmp_path / "lancedb"))
    unit = np.eye(4, dtype=np.float32)
    store.write_known_good(db, ["a"], [SERVED[0]], [0.9], unit[:1], "v1")
    embed = lambda texts: np.repeat(unit[:1], len(texts), axis=0)  # noqa: E731 - every prompt is the known-good one

    near = make_engine(artefacts, policy("knn_similarity", 0.5), db=db, embed=embed, escalation=FakeClaude())
    r = near.complete(chat_call(f"qeforge-{SERVED[0]}", PROMPT, max_tokens=MAX, stop=[stop_inside(expected[SERVED[0]])]))
    assert (r.decision, r.reason) == ("local", "confident") and r.confidence == pytest.approx(1.0)
    assert "routing_s" in r.timings

    far = make_engine(artefacts, policy("knn_similarity", 0.5), db=db, embed=embed, escalation=FakeClaude())
    s = serve(far)
    body = httpx.post(f"{s.url}/v1/chat/completions",
                      json={"model": f"qeforge-{SERVED[1]}", "messages": PROMPT, "max_tokens": MAX}).json()
    assert body["choices"][0]["message"]["content"] == "claude says hi"  # no known-good row of this category: -1
    assert body["qeforge"]["decision"] == "escalated" and body["qeforge"]["confidence"] == -1.0


def test_auto_model_uses_the_category_classifier(artefacts, expected, tmp_path):
    import numpy as np

    from qeforge.curation.categorize import CategoryClassifier

    from qeforge import store

    path = tmp_path / "classifier.json"
    CategoryClassifier(list(SERVED), 20 * np.eye(3, dtype=np.float32), np.zeros(3, dtype=np.float32)).save(path)
    db = store.connect(str(tmp_path / "lancedb"))
    store.write_known_good(db, ["a"], [SERVED[2]], [0.9], np.asarray([[0, 0.6, 0.8]], np.float32), "v1")
    vector = {"placed": [0, 0.6, 0.8],  # p 0.98 for SERVED[2], the known-good row itself
              "unlike": [0.5, -0.5, 0.7071],  # p 0.98 for SERVED[2], but cosine 0.27 to its nearest known-good row
              "unsure": [0.56, 0.56, 0.61]}  # p 0.58 for SERVED[2]: under 0.6
    eng = make_engine(artefacts, policy(), classifier_path=path, db=db, escalation=FakeClaude(),
                      embed=lambda t: np.tile([vector[t[0]]], (len(t), 1)).astype(np.float32))
    for text in ("unsure", "unlike"):
        r = eng.complete(chat_call("any-name", [{"role": "user", "content": text}], max_tokens=MAX))
        assert (r.category, r.decision, r.reason) == ("none", "escalated", "no_category"), text
    eng.escalation = None
    r = eng.complete(chat_call("qeforge", [{"role": "user", "content": "placed"}], max_tokens=MAX))
    assert (r.category, r.answered_by) == (SERVED[2], f"qeforge-{SERVED[2]}@v1")
    # without Claude, fallback "local" answers with the likeliest served category, marked
    r = eng.complete(chat_call("qeforge", [{"role": "user", "content": "unsure"}], max_tokens=MAX))
    assert (r.decision, r.reason, r.answered_by, r.category) == ("local_fallback", "no_category", f"qeforge-{SERVED[2]}@v1", "none")


def test_reload_swaps_the_adapter(artefacts, expected, serve):
    eng = make_engine(artefacts, policy())
    s = serve(eng)
    c = SERVED[0]
    client = openai_client(s.url)
    first = client.chat.completions.create(model=f"qeforge-{c}", messages=PROMPT, max_tokens=MAX)
    assert first.choices[0].message.content == expected[c]
    eng.source.adapters[c] = artefacts["v2"]
    reloaded = httpx.post(f"{s.url}/admin/reload").json()
    assert reloaded["status"] == "reloaded" and reloaded["adapters"][c] == "v2"
    second = client.chat.completions.create(model=f"qeforge-{c}", messages=PROMPT, max_tokens=MAX)
    assert second.model_extra["qeforge"]["adapter_version"] == "v2"
    assert second.choices[0].message.content != expected[c]
    assert second.choices[0].message.content == eng.complete(chat_call(f"qeforge-{c}", PROMPT, max_tokens=MAX)).text
    other = client.chat.completions.create(model=f"qeforge-{SERVED[1]}", messages=PROMPT, max_tokens=MAX)
    assert other.choices[0].message.content == expected[SERVED[1]]
    # a broken source keeps the old snapshot serving
    eng.source.adapters[c] = artefacts["root"] / "missing"
    r = httpx.post(f"{s.url}/admin/reload")
    assert r.status_code == 500 and "Traceback" not in r.text and r.json()["error"]["type"] == "server_error"
    assert httpx.get(f"{s.url}/health").json()["adapters"][c] == "v2"


def _error(r, status, code=None):
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text and 'File "' not in r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == {401: "authentication_error", 503: "service_unavailable"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    if code:
        assert err["code"] == code
    return err


def test_bad_requests_get_openai_shaped_4xx(server, engine):
    url = f"{server.url}/v1/chat/completions"
    ok = {"model": f"qeforge-{SERVED[0]}", "messages": PROMPT, "max_tokens": MAX}
    post = lambda body: httpx.post(url, json=body)  # noqa: E731
    _error(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert _error(post({"model": ok["model"]}), 400)["param"] == "messages"
    assert _error(post({**ok, "messages": "hi"}), 400)["param"] == "messages"
    _error(post({**ok, "messages": []}), 400)
    _error(post({**ok, "messages": [{"role": "system", "content": "only a system turn"}]}), 400)
    _error(post({**ok, "messages": [{"role": "function", "content": "x"}]}), 400)
    _error(post({**ok, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}), 400)
    _error(post({**ok, "model": "qeforge-cooking"}), 404, "model_not_found")  # qeforge-* names a category or nothing
    _error(post({**ok, "model": "qeforge", "metadata": {"category": "cooking"}}), 400)
    _error(post({**ok, "max_tokens": 0}), 400)
    _error(post({**ok, "functions": [{"name": "f"}]}), 400, "unsupported_parameter")
    _error(httpx.get(f"{server.url}/v1/nothing-here"), 404)


def test_valid_requests_the_local_side_cannot_serve_are_declined_with_a_reason(artefacts, serve, engine):
    """No Claude and fallback "decline": never a 4xx for a valid request, a 503 whose code says why."""
    s = serve(make_engine(artefacts, policy(), fallback="decline"))
    url = f"{s.url}/v1/chat/completions"
    ok = {"model": f"qeforge-{SERVED[0]}", "messages": PROMPT, "max_tokens": 64}
    post = lambda body: httpx.post(url, json=body, timeout=300)  # noqa: E731
    declined = {
        "gpt-4o": ({**ok, "model": "gpt-4o"}, "no_category"),  # no classifier here: the router cannot place it
        "a category without a champion": ({**ok, "model": "qeforge-code-review"}, "no_local_model"),
        "tools": ({**ok, "tools": [{"type": "function", "function": {"name": "f"}}]}, "unsupported:tools"),
        "n 2": ({**ok, "n": 2}, "unsupported:n"),
        "response_format": ({**ok, "response_format": {"type": "json_object"}}, "unsupported:response_format"),
        "an image": ({**ok, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "unsupported:images"),
        "a tool result": ({**ok, "messages": [*PROMPT, {"role": "tool", "tool_call_id": "c1", "content": "42"}]},
                          "unsupported:tools"),
        "a prompt the context cannot hold": ({**ok, "messages": [{"role": "user", "content": "x = 1\n" * engine.context_length}]},
                                             "context_exceeded"),
    }
    for name, (body, reason) in declined.items():
        r = post(body)
        assert _error(r, 503, reason)["param"] is None, name
        assert f"decision=declined; reason={reason}" in r.headers["X-QEForge-Route"], name
    # max_tokens past the context is a ceiling: answered with the room there is
    r = post({**ok, "max_tokens": 10**30})
    assert r.status_code == 200 or (r.status_code, r.json()["error"]["code"]) == (503, "truncated")
    metrics = httpx.get(f"{s.url}/metrics").text
    assert 'qeforge_requests_total{category="none",decision="declined",protocol="openai",reason="no_category",status="503"} 1.0' in metrics


def test_api_key_guards_everything_but_health(engine, serve):
    import openai

    s = serve(engine, api_key="s3cret")
    public = httpx.get(f"{s.url}/health")
    assert public.status_code == 200 and public.json()["status"] == "ok"
    assert {"base_model", "source"}.isdisjoint(public.json()) and artefacts_root(engine) not in public.text  # no paths
    detailed = httpx.get(f"{s.url}/health", headers={"Authorization": "Bearer s3cret"}).json()
    assert detailed["base_model"] == engine.snapshot.base_model and detailed["source"] == engine.snapshot.source
    _error(httpx.get(f"{s.url}/v1/models"), 401)
    _error(httpx.get(f"{s.url}/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    _error(httpx.post(f"{s.url}/admin/reload"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai_client(s.url, "wrong").chat.completions.create(model=f"qeforge-{SERVED[0]}", messages=PROMPT)
    assert len(openai_client(s.url, "s3cret").models.list().data) == len(SERVED) + 1


def artefacts_root(engine) -> str:
    return str(engine.snapshot.base_model).rsplit("/", 1)[0]


def test_internal_error_is_a_generic_500(artefacts, serve):
    eng = make_engine(artefacts, policy())

    def boom(*a, **kw):
        raise RuntimeError("secret internal detail")

    eng.complete = boom
    s = serve(eng)
    r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": f"qeforge-{SERVED[0]}", "messages": PROMPT})
    err = _error(r, 500)
    assert "secret" not in json.dumps(err)


def test_int8_backend_answers_from_the_lean_decoder_on_int8_weights(artefacts):
    """`--backend torch-int8` (the CLI's choice, and ServingSettings.backend's): the lean decoder on
    weight-only int8 weights answers, and says so where /health reads it."""
    from qeforge.cli import build_parser

    assert build_parser().parse_args(["serve", "--backend", "torch-int8"]).backend == "torch-int8"
    eng = make_engine(artefacts, policy(), backend="torch-int8")
    assert eng.generation_path == "lean-int8"
    r = eng.complete(chat_call(f"qeforge-{SERVED[0]}", PROMPT, max_tokens=MAX))
    assert r.text and r.reason in ("confident", "truncated") and r.answered_by == f"qeforge-{SERVED[0]}@v1"
    with pytest.raises(ValueError, match="backend must be one of"):
        make_engine(artefacts, policy(), backend="int8")


def test_onnx_backend_answers_like_torch(artefacts, expected, tmp_path):
    pytest.importorskip("qeforge.serving.onnx_runtime")
    pytest.importorskip("onnxruntime")
    one = {SERVED[0]: artefacts["adapters"][SERVED[0]]}
    from qeforge.serving.engine import Engine
    from qeforge.serving.source import DirectorySource

    eng = Engine(DirectorySource(artefacts["base"], one, policy()), backend="onnx",
                 onnx_cache_dir=tmp_path / "onnx")
    r = eng.complete(chat_call(f"qeforge-{SERVED[0]}", PROMPT, max_tokens=MAX))
    assert (r.text, r.reason) == (expected[SERVED[0]], "truncated")  # cut at MAX tokens, as torch's was


def test_sources_and_cli_arguments(artefacts, qe_home):
    from qeforge.cli import _serve_source, build_parser
    from qeforge.serving.registry_source import RegistrySource
    from qeforge.serving.source import DirectorySource, FirstAvailableSource, LatestLocalSource, default_source

    c, path = SERVED[0], artefacts["adapters"][SERVED[0]]
    args = build_parser().parse_args(["serve", "--adapter", f"{c}={path}", "--port", "0"])
    source = _serve_source(args)
    snap = source.load()
    assert isinstance(source, DirectorySource) and snap.base_model == artefacts["base"]
    assert snap.adapters[c].version == "v1" and snap.adapters[c].policy == {"signal": "mean_logprob", "threshold": "-inf"}
    with pytest.raises(ValueError):
        DirectorySource(artefacts["base"], {"cooking": path})
    fresh = qe_home / "fresh"  # nothing registered, nothing trained yet
    fresh.mkdir(parents=True)
    fallback = default_source(f"sqlite:///{fresh / 'mlflow.db'}", fresh / "adapters", fresh / "policies", fresh / "cache")
    assert isinstance(fallback, FirstAvailableSource)
    assert [type(s) for s in fallback.sources] == [RegistrySource, LatestLocalSource]
    with pytest.raises(FileNotFoundError, match="RegistrySource.*LatestLocalSource"):
        fallback.load()


def _raw(**fields) -> bytes:
    """A request body with fields spliced in as raw JSON text (NaN, Infinity, \\ud800 escapes)."""
    body = json.dumps({"model": f"qeforge-{SERVED[0]}", "messages": PROMPT, "max_tokens": MAX})[:-1]
    return (body + "".join(f", {json.dumps(k)}: {v}" for k, v in fields.items()) + "}").encode()


HOSTILE_BODIES = {  # name: (raw body, expected status, expected param)
    "temperature NaN": (_raw(temperature="NaN"), 400, "temperature"),
    "top_p Infinity": (_raw(top_p="Infinity"), 400, "top_p"),
    "temperature as a string": (_raw(temperature='"0.5"'), 400, "temperature"),
    "max_tokens true": (_raw(max_tokens="true"), 400, "max_tokens"),
    "max_tokens 1e400": (_raw(max_tokens="1e400"), 400, "max_tokens"),
    "content null": (_raw(messages='[{"role": "user", "content": null}]'), 400, "messages[0].content"),
    "a message that is a number": (_raw(messages='[{"role": "user", "content": "hi"}, 5]'), 400, "messages[1]"),
    "metadata.category a list": (_raw(model='"qeforge"', metadata='{"category": ["test-generation"]}'), 400, "metadata.category"),
    "metadata.category a dict": (_raw(model='"qeforge"', metadata='{"category": {"a": 1}}'), 400, "metadata.category"),
    "lone surrogate in content": (_raw(messages='[{"role": "user", "content": "hi \\ud800"}]'), 400, "messages[0].content"),
    "lone surrogate in a text part": (_raw(messages='[{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]'),
                                      400, "messages[0].content[0].text"),
    "lone surrogate in the model": (_raw(model='"qeforge-\\ud800"'), 400, "model"),
    "lone surrogate in a key": (_raw(metadata='{"\\ud800": "x"}'), 400, "metadata"),
    "model a number": (_raw(model="123"), 400, "model"),
    "tools not a list": (_raw(tools='{"type": "function"}'), 400, "tools"),
    "n 0": (_raw(n="0"), 400, "n"),
    "stop an empty string": (_raw(stop='""'), 400, "stop"),
    "stop 5 sequences": (_raw(stop='["a", "b", "c", "d", "e"]'), 400, "stop"),
    "a JSON array": (b"[]", 400, None),
    "invalid UTF-8": (b'{"model": "\xff\xfe"}', 400, None),
    "nested 10,000 deep": (b'{"model": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, None),
}


def test_hostile_requests_get_4xx_never_5xx(engine, serve, monkeypatch):
    def no_tokenizing(*a, **kw):
        raise AssertionError("a prompt that cannot fit was tokenized")

    s = serve(engine, max_body_bytes=1 << 20)
    url = f"{s.url}/v1/chat/completions"
    statuses = {}
    for name, (body, status, param) in HOSTILE_BODIES.items():
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        statuses[name] = r.status_code
        err = _error(r, status)
        assert err["param"] == param, (name, err)
    # Over the limit: refused by Content-Length before the body is read, or while a chunked one streams in.
    huge = json.dumps({"model": f"qeforge-{SERVED[0]}", "messages": [{"role": "user", "content": "x" * (20 << 20)}]}).encode()
    statuses["20 MB body"] = _error(httpx.post(url, content=huge), 413, "request_too_large") and 413
    chunks = (huge[i:i + (256 << 10)] for i in range(0, 2 << 20, 256 << 10))
    statuses["2 MB chunked body"] = _error(httpx.post(url, content=chunks), 413, "request_too_large") and 413
    # Under the limit but longer than the context can hold at any tokenization: refused untokenized.
    monkeypatch.setattr(engine._state, "prompt_ids", no_tokenizing)
    long = {"model": f"qeforge-{SERVED[0]}", "messages": [{"role": "user", "content": "x" * (900 << 10)}]}
    statuses["900 KB prompt"] = _error(httpx.post(url, json=long), 503, "context_exceeded") and 503
    assert not [name for name, status in statuses.items() if status >= 500 and status != 503]  # 503: declined, with its reason
