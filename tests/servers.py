"""The one way tests start servers: in-process ASGI apps with qeforge.serving.background, other
programs (`mlflow server`, `dagster dev`) with spawn/wait_until/stop here."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from qeforge.serving.background import BackgroundServer, free_port

__all__ = ["BackgroundServer", "free_port", "spawn", "stop", "wait_until"]


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
