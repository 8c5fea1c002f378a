"""The Dagster UI in a real browser: `dagster dev` for this project, driven with Playwright + Chromium.

Checks that the global asset lineage shows every asset of the code location and the Checks tabs show
every asset check, materializes `raw_trajectories` with the UI's Materialize button (the run must
reach SUCCESS and its materialization must show on the asset's page), and launches one category
partition, observed and then terminated (the partitioned assets train models: too slow for a test).

Screenshots go to pytest's temp dir; with QEFORGE_UPDATE_SCREENSHOTS=1 they refresh the README's
docs/screenshots/ (a test run never rewrites tracked files by default). Chromium: $QEFORGE_CHROMIUM, a
`chromium` on PATH (Debian's package; .ci/run installs it), or a browser `playwright install`
downloaded. The test is skipped only when Playwright or every such browser is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, spawn, stop, wait_until

ROOT = Path(__file__).resolve().parents[1]
README_SCREENSHOTS = ROOT / "docs" / "screenshots"
READY_TIMEOUT_S = 180
RUN_TIMEOUT_S = 150
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def _chromium() -> tuple[str | None, str]:
    """(executable path or None for Playwright's own download, reason when nothing is usable)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "Playwright is not installed (pip install -e '.[dev]')"
    for candidate in (os.environ.get("QEFORGE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found, ""
    try:
        with sync_playwright() as p:
            if Path(p.chromium.executable_path).exists():
                return None, ""
    except Exception:  # noqa: BLE001 - a broken driver means "no browser" here
        pass
    return None, "no Chromium found: apt-get install chromium, or set QEFORGE_CHROMIUM"


CHROMIUM, NO_BROWSER = _chromium()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER)]


class Dagster:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def location(self) -> tuple[str, str] | None:
        """(location, repository) once the code location has loaded; None while it loads."""
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError {"
            " __typename ... on RepositoryLocation { name repositories { name } }"
            " ... on PythonError { message } } } } } }"
        )
        for entry in data["workspaceOrError"]["locationEntries"]:
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                raise AssertionError(f"code location {entry['name']} failed to load: {loaded['message']}")
            if entry["loadStatus"] == "LOADED" and loaded:
                return loaded["name"], loaded["repositories"][0]["name"]
        return None

    def run(self, run_id: str) -> dict:
        data = self.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { runId status"
            " tags { key value } } } }",
            {"id": run_id},
        )
        return data["runOrError"]

    def wait_for_run(self, run_id: str, statuses: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run.get("status") in statuses or time.monotonic() > deadline:
                return run
            time.sleep(1)

    def run_errors(self, run_id: str) -> str:
        data = self.graphql(
            "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {"
            " __typename ... on MessageEvent { message } ... on ErrorEvent { error { message } } } } } }",
            {"id": run_id},
        )
        events = data["logsForRun"].get("events", [])
        return "\n".join(
            (e.get("error") or {}).get("message") or e.get("message", "") for e in events if "FAILURE" in e["__typename"].upper()
        )


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """`dagster dev` on a free port with a scratch DAGSTER_HOME and QEFORGE_HOME holding a demo bank."""
    tmp = tmp_path_factory.mktemp("ui")
    dagster_home, qeforge_home = tmp / "dagster_home", tmp / "qeforge_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("QEFORGE_LANCEDB_URI", "MLFLOW_TRACKING_URI")}
    env.update(DAGSTER_HOME=str(dagster_home), QEFORGE_HOME=str(qeforge_home), HF_HUB_OFFLINE="1")
    port = free_port()
    log = (tmp / "dagster-dev.log").open("wb")
    process = spawn([sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # cwd: workspace.yaml
    try:
        # The demo bank is written while the server starts (raw_trajectories fails on an empty store).
        from qeforge import store
        from qeforge.demo import write_demo_jsonl
        from qeforge.ingest import import_jsonl

        path = write_demo_jsonl(tmp / "demo.jsonl", n=200, seed=0, with_embeddings=False)
        imported = import_jsonl(store.connect(str(qeforge_home / "lancedb")), path)
        assert imported.imported > 0

        ui = Dagster(port)
        located = []

        def code_location_loaded() -> bool:
            located.append(ui.location())  # (location, repository) once loaded, else None
            return bool(located[-1])

        try:
            wait_until(code_location_loaded, timeout_s=READY_TIMEOUT_S, process=process, what="dagster dev", poll_s=2)
        except RuntimeError as e:
            raise AssertionError(f"{e}:\n{(tmp / 'dagster-dev.log').read_text()[-4000:]}") from None
        ui.location_name, ui.repository_name = located[-1]
        yield ui
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _page(browser, ui: Dagster, *, width: int = 1600, height: int = 1000, scale: float = 1.5, vertical: bool = False, expanded_groups=()):
    """A page with the first-visit community dialog already dismissed and graph preferences preset."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale, base_url=ui.base)
    storage = {"communityNux": json.dumps("1"), "dagster-nav-collapsed": "true"}
    if vertical:
        storage["asset-graph-direction"] = json.dumps("vertical")
    if expanded_groups:
        storage["asset-graph-open-graph-nodes-global-__GLOBAL__"] = json.dumps(
            {"expanded": ",".join(f"global@global:{g}" for g in expanded_groups)}
        )
    context.add_init_script(
        "\n".join(f"window.localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in storage.items())
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


# Names on the lineage graph's nodes: full nodes carry the name as a tooltip (it may be shown
# truncated), zoomed-out nodes as their only text.
GRAPH_NODE_NAMES = """() => {
  const names = new Set();
  for (const node of document.querySelectorAll('foreignObject')) {
    for (const e of node.querySelectorAll('[data-tooltip]')) names.add(e.getAttribute('data-tooltip'));
    for (const e of node.querySelectorAll('*')) if (!e.children.length) names.add(e.textContent.trim());
  }
  return [...names];
}"""
GRAPH_BOUNDS = """() => {
  const rects = Array.from(document.querySelectorAll('foreignObject'))
    .map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0);
  return {x: Math.min(...rects.map(r => r.left)), y: Math.min(...rects.map(r => r.top)),
          r: Math.max(...rects.map(r => r.right)), b: Math.max(...rects.map(r => r.bottom))};
}"""


def _asset_url(key) -> str:
    return "/assets/" + "/".join(key.path)


def test_dagster_ui_shows_every_asset_and_check_and_materializes(dagster_ui, browser, tmp_path):
    from playwright.sync_api import expect

    from pipelines.definitions import defs

    ui = dagster_ui
    graph = defs.resolve_asset_graph()
    asset_keys = sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
    check_keys = sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name))
    groups = sorted({graph.get(k).group_name for k in asset_keys})
    assert asset_keys and check_keys

    # The server's view matches the definitions (every asset and every check).
    data = ui.graphql(
        "{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }"
    )
    served = {tuple(n["assetKey"]["path"]): {c["name"] for c in n["assetChecksOrError"].get("checks", [])} for n in data["assetNodes"]}
    assert set(served) == {tuple(k.path) for k in asset_keys}
    assert {(a, c) for a, checks in served.items() for c in checks} == {(tuple(k.asset_key.path), k.name) for k in check_keys}

    # Every asset check is rendered on its asset's Checks tab.
    page = _page(browser, ui)
    by_asset: dict = {}
    for key in check_keys:
        by_asset.setdefault(key.asset_key, []).append(key.name)
    for asset_key, names in by_asset.items():
        page.goto(_asset_url(asset_key) + "?view=checks")
        expect(page.get_by_text(f"Checks ({len(names)})")).to_be_visible()
        for name in names:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()

    # Materialize raw_trajectories with the asset page's Materialize button.
    raw = next(k for k in asset_keys if k.path == ["raw_trajectories"])
    page.goto(_asset_url(raw))
    materialize = page.locator("button", has_text="Materialize").first
    expect(materialize).to_be_enabled()
    materialize.click()
    # Its upstream `recorded_exchanges` was never materialized in this instance, so the UI asks first.
    confirm = page.get_by_role("dialog").get_by_role("button", name="Confirm")
    expect(confirm).to_be_visible()
    confirm.click()
    view = page.locator("a[href^='/runs/']", has_text="View")
    expect(view).to_be_visible()
    run_id = view.get_attribute("href").rsplit("/", 1)[-1]
    run = ui.wait_for_run(run_id, TERMINAL, RUN_TIMEOUT_S)
    assert run["status"] == "SUCCESS", f"run {run_id}: {run.get('status')}\n{ui.run_errors(run_id)}"
    checked = ui.graphql(
        "query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode { assetChecksOrError {"
        " ... on AssetChecks { checks { name executionForLatestMaterialization { runId status } } } } } } }",
        {"key": {"path": raw.path}},
    )["assetNodeOrError"]["assetChecksOrError"]["checks"]
    assert {c["name"]: c["executionForLatestMaterialization"] for c in checked} == {
        name: {"runId": run_id, "status": "SUCCEEDED"} for name in by_asset.get(raw, [])
    }

    # The finished run, rendered: status, the materialization and both checks' results.
    shots = README_SCREENSHOTS if os.environ.get("QEFORGE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    page.goto(f"/runs/{run_id}")
    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()
    expect(page.get_by_text("ASSET_MATERIALIZATION").first).to_be_visible()
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    page.wait_for_timeout(1500)  # let the Gantt chart settle
    page.screenshot(path=shots / "dagster-run.png")

    # ...and on the asset's page: the materialization from this run, with its row count.
    page.goto(_asset_url(raw) + "?view=events")
    expect(page.get_by_text(f"Materialized in run {run_id[:8]}").first).to_be_visible()
    expect(page.get_by_text("dagster/row_count").first).to_be_visible()
    page.context.close()

    # The global asset lineage, every group expanded: one node per asset of the code location.
    # Tall enough for Dagster to draw full nodes (status, checks, partitions) rather than bare names.
    lineage = _page(browser, ui, width=1300, height=3000, scale=1.5, vertical=True, expanded_groups=groups)
    lineage.goto("/asset-groups")
    expect(lineage.get_by_text("Global asset lineage")).to_be_visible()
    expected = {k.to_user_string() for k in asset_keys}
    deadline, expanded = time.monotonic() + 60, False
    while (missing := expected - set(lineage.evaluate(GRAPH_NODE_NAMES))) and time.monotonic() < deadline:
        if not expanded and time.monotonic() > deadline - 45:
            lineage.keyboard.press("Alt+KeyE")  # "Expand all groups", should the preset not be honoured
            expanded = True
        lineage.wait_for_timeout(500)
    assert not missing, f"assets missing from the global lineage graph: {sorted(missing)}"
    # Node status (materialized, checks) arrives after the layout: wait for every "Loading…" to go.
    loading = lineage.locator("foreignObject", has_text="Loading")
    deadline = time.monotonic() + 30
    while loading.count() and time.monotonic() < deadline:
        lineage.wait_for_timeout(500)
    lineage.wait_for_timeout(500)
    box = lineage.evaluate(GRAPH_BOUNDS)
    margin = 24
    viewport = lineage.viewport_size
    clip = {"x": max(0, box["x"] - margin), "y": max(0, box["y"] - margin)}
    clip["width"] = min(viewport["width"], box["r"] + margin) - clip["x"]
    clip["height"] = min(viewport["height"], box["b"] + margin) - clip["y"]
    lineage.screenshot(path=shots / "dagster-asset-graph.png", clip=clip)
    lineage.context.close()

    # One category partition: launched as the UI's partition launcher does, observed, then terminated.
    partitioned = next(k for k in asset_keys if graph.get(k).partitions_def is not None
                       and not any(graph.get(p).partitions_def is not None for p in graph.get(k).parent_keys))
    partition = graph.get(partitioned).partitions_def.get_partition_keys()[0]
    launched = ui.graphql(
        "mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename"
        " ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message }"
        " ... on RunConfigValidationInvalid { errors { message } } } }",
        {
            "params": {
                "selector": {
                    "repositoryLocationName": ui.location_name,
                    "repositoryName": ui.repository_name,
                    "jobName": "__ASSET_JOB",
                    "assetSelection": [{"path": partitioned.path}],
                    "assetCheckSelection": [  # its checks come along, as with the Materialize button
                        {"assetKey": {"path": c.asset_key.path}, "name": c.name}
                        for c in check_keys if c.asset_key == partitioned
                    ],
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    partition_run_id = launched["run"]["runId"]
    try:
        run = ui.wait_for_run(partition_run_id, {"QUEUED", "STARTING", "STARTED", *TERMINAL}, 30)
        assert run["status"] in {"QUEUED", "STARTING", "STARTED", *TERMINAL}, run
        assert {"key": "dagster/partition", "value": partition} in run["tags"]
        runs_page = _page(browser, ui)
        runs_page.goto(f"/runs/{partition_run_id}")
        expect(runs_page.get_by_text(partitioned.to_user_string()).first).to_be_visible()
        runs_page.context.close()
    finally:
        if ui.run(partition_run_id).get("status") not in TERMINAL:
            ui.graphql(
                "mutation($id: String!) { terminateRun(runId: $id) { __typename } }", {"id": partition_run_id}
            )
        run = ui.wait_for_run(partition_run_id, TERMINAL, 60)
    assert run["status"] in {"CANCELED", "FAILURE"}, run
    print(f"partition run {partition_run_id} ({partitioned.to_user_string()}[{partition}]): {run['status']}")
