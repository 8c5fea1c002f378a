"""The one way tests start servers: in-process ASGI apps with qeforge.serving.background, other
programs (`mlflow server`, `dagster dev`) with spawn/wait_until/stop here."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from starlette.requests import Request  # module level: the stand-in's route annotation resolves here

from qeforge.serving.background import BackgroundServer, free_port

__all__ = ["BackgroundServer", "StandInClaude", "free_port", "spawn", "stop", "wait_until"]


def spawn(cmd: list[str], **popen_kwargs) -> subprocess.Popen:
    """`cmd` as the leader of its own process group, so stop() reaches every child it starts."""
    return subprocess.Popen(
        cmd, start_new_session=True,
        # A parent that ignores SIGINT (a background job, some CI shells) would hand that on, and
        # `dagster dev` then ignores SIGTERM too: restore the default so stop() can end it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen_kwargs,
    )


def wait_until(ready: Callable[[], bool], *, timeout_s: float, process: subprocess.Popen | None = None,
               what: str = "the server", poll_s: float = 0.5) -> None:
    """Poll `ready` (exceptions count as not ready) until true; fail when `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}) before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f}s")
        time.sleep(poll_s)


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the whole process group (what Ctrl-C does), then SIGTERM, then SIGKILL."""
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader so the group can empty
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


class StandInClaude:
    """Anthropic's POST /v1/messages on loopback, for the gateway's escalations (the anthropic SDK
    reaches it through ANTHROPIC_BASE_URL). It records every request and answers deterministically:
    a tool_use block for the first tool offered, else text naming the model and the last user text."""

    def __init__(self):
        from fastapi import FastAPI

        self.requests: list[dict] = []
        self.fail = False
        app = FastAPI()

        @app.post("/v1/messages")
        async def messages(request: Request):
            body = await request.json()
            self.requests.append({"body": body, "headers": dict(request.headers)})
            if self.fail:
                from fastapi.responses import JSONResponse

                return JSONResponse({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, 529)
            last = body["messages"][-1]["content"]
            text = last if isinstance(last, str) else " ".join(b.get("text", "") for b in last if b.get("type") == "text")
            if body.get("tools"):
                content = [{"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": body["tools"][0]["name"],
                            "input": {"q": "x"}}]
                stop = "tool_use"
            else:
                content = [{"type": "text", "text": f"claude {body['model']}: {text[:40]}"}]
                stop = "end_turn"
            return {"id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": body["model"],
                    "content": content, "stop_reason": stop, "stop_sequence": None,
                    "usage": {"input_tokens": 11, "output_tokens": 7}}

        self.server = BackgroundServer(app, startup_timeout_s=30)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "StandInClaude":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
