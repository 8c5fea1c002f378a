"""A simulated fleet: the demo generator's tasks sent to the gateway the way agentic-qe 3.14 sends them,
with a stand-in Claude on loopback that answers with the demo generator's own answers.

The main job uses it to show the loop (traffic -> recorded exchanges -> curation -> training ->
a higher local share); nothing here runs in production, where the fleet and Claude are real.

What is sent (the templates are agentic-qe 3.14's, as recorded in the fixtures
tests/fixtures/agentic-qe-3.14-llm-requests/; tests/test_fleet.py holds them to those files):
- test-generation: the test-enhancement call (004): its system prompt verbatim, the focal code under
  "## Source Code to Test" in a `typescript` fence (agentic-qe labels Python so), an empty current suite;
- code-review: the defect-risk call (122) on the diff, answered in its JSON structure;
- coverage-analysis, flaky-detection: agentic-qe 3.14 makes no LLM call for these (their LLM functions
  have no callers); the simulated fleet sends the task as the user turn in the same request shape, as a
  fleet with those call sites wired would;
- the quality gate's preflight (096, "Reply with exactly: OK"): none of the four categories.
Calls alternate between the OpenAI provider's body (/v1/chat/completions) and Ollama's (/api/chat).
"""

import json
import re
from dataclasses import dataclass

from qeforge.categories import CATEGORIES

# 004 (and 138, 153): agentic-qe's test enhancement.
TEST_ENHANCEMENT_SYSTEM = """You are an expert test engineer. Enhance the provided test code by:
1. Adding edge case tests (null, undefined, empty, boundary values)
2. Improving assertion specificity
3. Adding descriptive test names
4. Adding JSDoc comments explaining test purpose
Return ONLY the enhanced test code, no explanations."""
TEST_ENHANCEMENT_REQUIREMENTS = """## Requirements:
1. Add tests for edge cases (null, undefined, empty inputs, boundary values)
2. Improve assertion specificity (use toEqual, toContain, etc. appropriately)
3. Add descriptive test names that explain what is being tested
4. Add error handling tests if applicable
5. Keep the test framework style consistent
"""
# 122: defect risk of code changes.
DEFECT_RISK_SYSTEM = """You are an expert software quality engineer specializing in defect prediction and code analysis.
Your task is to analyze code changes and provide actionable insights about potential defects.

Respond in JSON format with the following structure:
{
  "riskFactors": ["array of specific risk factors identified"],
  "reviewFocusAreas": ["array of code areas/patterns requiring focused review"],
  "similarHistoricalDefects": ["array of similar defect patterns to watch for"],
  "confidenceLevel": 0.0-1.0,
  "explanation": "detailed explanation of the defect risk assessment"
}

Be specific and actionable. Focus on concrete issues, not generic advice."""
DEFECT_RISK_REQUEST = """## Analysis Request:
1. Identify specific risk factors in the code changes
2. Suggest code review focus areas based on defect likelihood
3. Note any patterns similar to historical defects
4. Provide confidence level and detailed explanation
"""
PREFLIGHT = "Reply with exactly: OK"  # 096
OPENAI_MODEL, OLLAMA_MODEL = "aqe-default", "llama3.1"  # what agentic-qe's providers put on the wire
FENCE = re.compile(r"```[\w-]*\n(.*?)```", re.S)
# Spec seeds far above the demo bank's (which draws below 10^6): the fleet's tasks are new to the adapters.
FLEET_SEED_BASE = 50_000_000


@dataclass
class FleetCall:
    path: str
    body: dict
    category: str  # what the task is, or "none"
    claude_answer: str  # what the stand-in Claude answers to it

    @property
    def user_text(self) -> str:
        return self.body["messages"][-1]["content"]


def test_enhancement(focal_code: str) -> list[dict]:
    functions = re.findall(r"^def (\w+)\((.*?)\)", focal_code, re.M)
    cover = "\n".join(f"- {name}({args}) (complexity: 1)" for name, args in functions)
    user = (f"## Source Code to Test:\n```typescript\n{focal_code}\n```\n\n## Current Test Code:\n```typescript\n\n```\n\n"
            f"## Functions to cover:\n{cover}\n\n{TEST_ENHANCEMENT_REQUIREMENTS}")
    return [{"role": "system", "content": TEST_ENHANCEMENT_SYSTEM}, {"role": "user", "content": user}]


def defect_risk(diff: str, path: str) -> list[dict]:
    user = (f"## Code Changes to Analyze:\n```\n\n// File: {path}\n{diff}\n```\n\n## ML-Based Risk Assessment:\n"
            f"- **{path}**: Probability 31.0%, Risk Level: low\n"
            "  Contributing factors: codeComplexity(0.08), changeFrequency(0.08), developerExperience(0.08)\n\n"
            f"{DEFECT_RISK_REQUEST}")
    return [{"role": "system", "content": DEFECT_RISK_SYSTEM}, {"role": "user", "content": user}]


def defect_risk_answer(review: str, path: str) -> str:
    """The demo reviewer's answer in the structure the defect-risk prompt demands."""
    findings = [line for line in review.splitlines() if line.strip()]
    return json.dumps({"riskFactors": findings[:3], "reviewFocusAreas": [path], "similarHistoricalDefects": [],
                       "confidenceLevel": 0.8, "explanation": review}, indent=2)


def render(category: str, task: str, answer: str, metadata: dict) -> tuple[list[dict], str]:
    """(messages as agentic-qe would send them, the answer Claude gives in that form)."""
    if category == "test-generation":
        return test_enhancement(metadata["focal_code"]), answer
    if category == "code-review":
        blocks = FENCE.findall(task)
        path = metadata.get("path") or "src/module.py"
        return defect_risk(blocks[0] if blocks else task, path), defect_risk_answer(answer, path)
    return [{"role": "user", "content": task}], answer


def request(messages: list[dict], i: int) -> tuple[str, dict]:
    """The OpenAI provider's body (even i) or Ollama's (odd i), with agentic-qe's parameters."""
    if i % 2 == 0:
        return "/v1/chat/completions", {"model": OPENAI_MODEL, "max_tokens": 2048, "temperature": 0.3, "messages": messages}
    return "/api/chat", {"model": OLLAMA_MODEL, "messages": messages, "stream": False,
                         "options": {"temperature": 0.3, "num_predict": 2048}}


def fleet_calls(per_category: int, *, seed: int = 0, preflights: int = 2) -> list[FleetCall]:
    """`per_category` tasks of each category from the demo generator (new spec seeds), rendered, then
    `preflights` quality-gate preflights; interleaved by category, as a fleet's agents run side by side."""
    from qeforge.demo import MAKERS

    by_category = []
    for c_index, category in enumerate(CATEGORIES):
        calls = []
        for k in range(per_category):
            spec = FLEET_SEED_BASE + seed * 10_000 + c_index * 1_000 + k
            example = MAKERS[category](spec, spec + 1)
            messages, answer = render(category, example.task, example.outputs["success"], example.metadata)
            calls.append((category, messages, answer))
        by_category.append(calls)
    ordered = [call for group in zip(*by_category) for call in group]
    ordered += [("none", [{"role": "user", "content": PREFLIGHT}], "OK")] * preflights
    out = []
    for i, (category, messages, answer) in enumerate(ordered):
        path, body = request(messages, i)
        out.append(FleetCall(path, body, category, answer))
    return out


def stand_in_claude(calls: list[FleetCall]):
    """Anthropic's POST /v1/messages answering each fleet call's last user turn with its demo answer
    (an unknown prompt gets "OK"): the Claude a main job on a machine without Claude escalates to."""
    from fastapi import FastAPI, Request

    answers = {c.user_text: c.claude_answer for c in calls}
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request):
        body = await request.json()
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else "".join(b.get("text", "") for b in last if b.get("type") == "text")
        answer = answers.get(text, "OK")
        return {"id": "msg_stand_in", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": len(text) // 4, "output_tokens": len(answer) // 4}}

    return app


def send(url: str, calls: list[FleetCall], caller: str, *, workers: int = 4) -> list[dict]:
    """Each call to the gateway at `url`, `workers` at a time as the fleet's agents would; the route
    (qeforge field) of every answer, in order. A call that fails raises."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def one(call: FleetCall) -> dict:
        r = httpx.post(url + call.path, json=call.body, timeout=600,
                       headers={"User-Agent": "node", "X-QEForge-Caller": caller})
        r.raise_for_status()
        return r.json()["qeforge"]

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, calls))
