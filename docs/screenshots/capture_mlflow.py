"""Screenshots of the MLflow model registry for the README, with Playwright and Chromium.

Starts `mlflow server` on a free local port against a *copy* of an existing tracking database
(the original is only read, never migrated or written), then captures:

  mlflow-registry.png       /#/models: the registered models (qeforge-<category>), versions, aliases
  mlflow-model-version.png  /#/models/<name>/versions/<v>: one version with its model card

Usage (from the project root, after a run of the pipeline registered at least one adapter):

    .venv/bin/python docs/screenshots/capture_mlflow.py [--db PATH] [--model NAME] [--version N]

--db defaults to <QEFORGE_HOME>/mlflow/mlflow.db (QEFORGE_HOME: the environment, else .qeforge).
--model defaults to qeforge-code-review when registered, else the first qeforge-* model;
--version defaults to that model's latest version. Chromium: --chromium, $QEFORGE_CHROMIUM,
or `chromium` on PATH (Debian's package). Artifact locations in the database are absolute, so the
model card and run links resolve against the original artifact store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PREFERRED_MODEL = "qeforge-code-review"


def default_db() -> Path:
    home = Path(os.environ.get("QEFORGE_HOME", ".qeforge")).expanduser()
    home = home if home.is_absolute() else ROOT / home
    return home / "mlflow" / "mlflow.db"


def snapshot(db: Path, into: Path) -> Path:
    """A consistent copy of a SQLite database that may be in use (opened read-only)."""
    copy = into / "mlflow.db"
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return copy


def pick_version(db: Path, model: str | None, version: str | None) -> tuple[str, str]:
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM registered_models ORDER BY name")]
        if model is None:
            ours = [n for n in names if n.startswith("qeforge-")]
            if not ours:
                raise SystemExit(f"no qeforge-* registered model in {db} (found: {names or 'none'})")
            model = PREFERRED_MODEL if PREFERRED_MODEL in ours else ours[0]
        elif model not in names:
            raise SystemExit(f"model {model!r} is not registered in {db} (found: {names or 'none'})")
        if version is None:
            row = con.execute(
                "SELECT MAX(CAST(version AS INTEGER)) FROM model_versions WHERE name = ? AND current_stage != 'Deleted_Internal'",
                (model,),
            ).fetchone()
            if not row or row[0] is None:
                raise SystemExit(f"model {model!r} has no versions in {db}")
            version = str(row[0])
        return model, version
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(explicit: str | None) -> str:
    for candidate in (explicit, os.environ.get("QEFORGE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise SystemExit("no Chromium found: apt-get install chromium, or pass --chromium PATH")


def stop(process: subprocess.Popen) -> None:
    """SIGINT, SIGTERM, then SIGKILL to the server's whole process group (its workers included)."""
    for sig, grace in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.3)


def wait_ready(base: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mlflow server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise SystemExit(f"mlflow server not ready after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


# First-visit UI: no MLflow Assistant side panel. (The "new Model Registry UI" announcement is
# answered with "Try it now" below: dismissing it would switch back to stages instead of aliases.)
QUIET_UI = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}


def quiet(page) -> None:
    """Close whatever still pops up over the page (should the presets above change names)."""
    try_it = page.get_by_role("dialog").get_by_role("button", name="Try it now")
    if try_it.count() and try_it.first.is_visible():
        try_it.first.click()
    for scope in (page.get_by_role("dialog"), page.locator("body")):
        for button in scope.get_by_role("button", name="Close", exact=True).all():
            if button.is_visible():
                try:
                    button.click(timeout=3_000)
                except Exception:  # noqa: BLE001 - gone already or covered: nothing to close
                    pass
    page.wait_for_timeout(300)


def grow_to_content(page, limit: int = 6000) -> None:
    """The app scrolls inside <main>: grow the viewport until nothing is scrolled away."""
    hidden = page.evaluate("() => { const m = document.querySelector('main'); return m ? m.scrollHeight - m.clientHeight : 0; }")
    if hidden > 0:
        size = page.viewport_size
        page.set_viewport_size({"width": size["width"], "height": min(limit, size["height"] + hidden)})
        page.wait_for_timeout(500)


def capture(base: str, model: str, version: str, out: Path, executable: str) -> list[Path]:
    import json

    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    registry, card = out / "mlflow-registry.png", out / "mlflow-model-version.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1.5)
            context.add_init_script(
                "\n".join(f"window.localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in QUIET_UI.items())
            )
            page = context.new_page()
            page.set_default_timeout(60_000)

            page.goto(f"{base}/#/models")
            expect(page.get_by_role("link", name=model).first).to_be_visible()
            page.wait_for_timeout(1500)
            quiet(page)
            page.screenshot(path=registry)

            page.goto(f"{base}/#/models/{model}/versions/{version}")
            expect(page.get_by_text(f"Version {version}").first).to_be_visible()
            # The model card is the version's Markdown description: its first heading names the model.
            expect(page.locator("h1, h2, h3", has_text=model).first).to_be_visible()
            page.wait_for_timeout(1500)
            quiet(page)
            grow_to_content(page)
            page.screenshot(path=card)
        finally:
            browser.close()
    return [registry, card]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=None, help="tracking database (default: <QEFORGE_HOME>/mlflow/mlflow.db)")
    parser.add_argument("--model", help=f"registered model (default: {PREFERRED_MODEL}, else the first qeforge-*)")
    parser.add_argument("--version", help="model version (default: the latest)")
    parser.add_argument("--out", type=Path, default=HERE, help="where the PNGs go (default: docs/screenshots)")
    parser.add_argument("--chromium", help="Chromium executable (default: $QEFORGE_CHROMIUM or chromium on PATH)")
    args = parser.parse_args(argv)

    db = (args.db or default_db()).expanduser().resolve()
    if not db.exists():
        raise SystemExit(f"no tracking database at {db}: run the pipeline first, or pass --db")
    executable = chromium(args.chromium)

    with tempfile.TemporaryDirectory(prefix="qeforge-mlflow-ui-") as tmp:
        copy = snapshot(db, Path(tmp))
        model, version = pick_version(copy, args.model, args.version)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "mlflow-server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{copy}",
                 "--default-artifact-root", Path(tmp, "artifacts").as_uri(),
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                cwd=tmp,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
            try:
                wait_ready(base, process, log)
                written = capture(base, model, version, args.out, executable)
            finally:
                stop(process)
    print(f"{model} version {version} from {db}:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
