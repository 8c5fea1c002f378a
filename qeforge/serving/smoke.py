"""The main job's last step: start the shim on the registered champions, answer one request per
category over HTTP on loopback, print the routing decisions, stop."""

from __future__ import annotations

import json
import urllib.request

from qeforge.categories import CATEGORIES, SYSTEM_PROMPTS, registered_model_name
from qeforge.curation.exchanges import SMOKE_CHECK_CALLER

PROMPTS = {
    "test-generation": "Write pytest tests for the following function:\n```python\ndef clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n```",
    "coverage-analysis": "Which lines of `sign` are not executed by the tests below?\n```\n  1 | def sign(x):\n  2 |     if x < 0:\n  3 |         return -1\n  4 |     return 1\n```\nTests:\n```python\ndef test_sign():\n    assert sign(3) == 1\n```",
    "flaky-detection": "Classify the test below as flaky or not-flaky and explain why.\n```python\nimport time\n\ndef test_fast():\n    start = time.time()\n    work()\n    assert time.time() - start < 0.01\n```",
    "code-review": "Review this diff and point out any problems:\n```diff\n+def total(values):\n+    sum = 0\n+    for v in values:\n+        sum += v\n+    return sum\n```",
}


def _post(url: str, body: dict) -> tuple[dict, dict]:
    # The caller header marks the check's recorded exchanges as its own, not the fleet's traffic.
    headers = {"Content-Type": "application/json", "X-QEForge-Caller": SMOKE_CHECK_CALLER}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read()), dict(response.headers)


def serve_one_request_per_category(settings, categories: tuple[str, ...] | None = None) -> bool:
    """`settings`: the gateway's (app.Settings, as the main job's resources resolve them)."""
    from qeforge.serving.app import create_app
    from qeforge.serving.background import BackgroundServer

    try:
        app = create_app(settings)
    except (FileNotFoundError, ValueError) as err:  # nothing promoted yet, or champions on different bases
        print(f"serve: nothing to serve: {err}")
        return False
    try:
        server = BackgroundServer(app).start()
    except RuntimeError as err:
        print(f"serve: {err}")
        return False
    ok = True
    try:
        with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:  # no paths shown without a key
            print(f"serve: gateway on {server.url} ({json.loads(response.read())['status']}, {app.state.engine.snapshot.source})")
        served = set(app.state.engine.served)  # less any adapter the backend refused
        for category in categories or CATEGORIES:
            if category not in served:  # the gate kept its candidate out of `champion`: nothing local to ask
                print(f"serve {category}: no champion registered, requests escalate to Claude")
                continue
            body = {"model": registered_model_name(category), "max_tokens": 64,
                    "messages": [{"role": "system", "content": SYSTEM_PROMPTS[category]},
                                 {"role": "user", "content": PROMPTS[category]}]}
            try:
                answer, headers = _post(f"{server.url}/v1/chat/completions", body)
            except OSError as e:
                print(f"serve {category}: FAILED ({e})")
                ok = False
                continue
            route = answer["qeforge"]
            text = answer["choices"][0]["message"]["content"].replace("\n", " ")[:70]
            print(f"serve {category}: {route['decision']} ({route['reason']}; {route['answered_by']}, {route['signal']} "
                  f"{route['confidence']} vs {route['threshold']}): {text!r}")
    finally:
        server.stop()
    return ok
