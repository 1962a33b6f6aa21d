"""The coordinator's dashboard in a real browser, against a real deployment.

A consortium on loopback: the coordinator served over mutual TLS (``serve_coordinator``),
three Fed-TCGA-BRCA sites as real nodes dialing it over mutual TLS (``run_node`` threads,
each with its privacy caps), and a researcher who submits a 2-round DP job through the
gRPC control API. Then headless Chromium logs in with a link made from the researcher's
kit, loads every page, checks that every chart drew data and that the run id is whole, and
saves the screenshots the docs use (``BIOFED_SCREENSHOTS=docs/images/dashboard``).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from biofed.coordinator import AnalysisJob, JobSpec, RunningCoordinator, serve_coordinator, tls_of
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import run_node
from biofed.transport.grpc import ControlClient
from biofed.web import RunningDashboard, coordinator_dashboard, login_url, make_login_token
from biofed.web import serve_dashboard as serve

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1", "center-2"]
NODE_TOML = (
    "[datasets.tcga-brca]\n"
    'path = "data/tcga-brca.csv"\nformat = "csv"\nsplit_column = "split"\n'
    'targets = { event = "event", time = "time" }\n'
    "\n[privacy.caps.tcga-brca]\nepsilon = 50.0\ndelta = 1e-3\n"
)
TERMINAL = ("finished", "finished_with_failures", "failed", "cancelled")


def job() -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "tcga-brca-dp-survival",
                "dataset": "tcga-brca",
                "rounds": 3,
                "seed": 11,
                "min_nodes": 3,
                "min_replies": 3,
                "round_timeout": 120.0,
            },
            "task": {
                "name": "pem_torch",
                "num_features": 39,
                "num_intervals": 10,
                "max_time": 3650.0,
            },
            # the demo's settings (benchmarks/privacy_utility.py), so the charts show learning
            "strategy": {"name": "fedadam", "server_learning_rate": 1.0, "tau": 0.1},
            "train": {"local_steps": 50, "batch_size": 32, "learning_rate": 1.0},
            "evaluate": {"split": "test", "metrics": "c_index"},
            "privacy": {
                "mode": "sample",
                "target_epsilon": 8.0,
                "delta": 1e-5,
                "max_grad_norm": 1.5,
                "accountant": "rdp",
            },
        }
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Deployment:
    fed: Consortium
    dashboard: RunningDashboard
    run_id: str
    km_id: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("coord-browser")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    fed = Consortium.create(
        root / "fed",
        consortium="TCGA-BRCA survival study",
        coordinator=address,
        sites=SITES,
        researchers=["alice"],
    )
    files = write_site_files(load_tcga_brca(), root / "data", format="csv")
    for site in SITES:
        kit = fed.kit_directory(site)
        (kit / "data").mkdir()
        shutil.copyfile(files[site], kit / "data" / "tcga-brca.csv")
        (kit / "node.toml").write_text(NODE_TOML)
    running: RunningCoordinator = serve_coordinator(
        fed.kit_directory("coordinator"),
        listen=address,
        state=f"sqlite:///{root / 'state.db'}",
        heartbeat_interval=1.0,
        node_wait=30.0,
    )
    stops: list[tuple[threading.Event, threading.Thread]] = []
    client = ControlClient(address, tls_of(load_kit(fed.kit_directory("alice"))), timeout=30.0)
    dashboard: RunningDashboard | None = None
    try:
        for site in SITES:
            stop = threading.Event()
            kit = fed.kit_directory(site)
            thread = threading.Thread(
                target=run_node, args=(kit, kit / "node.toml", stop), daemon=True
            )
            thread.start()
            stops.append((stop, thread))

        def online() -> bool:
            status = {n.node_id: n.status for n in client.list_nodes()}
            return all(status.get(s) == "online" for s in SITES)

        wait_for(online, 60, "the sites to connect")
        run_id = client.submit_run(job().to_json()).run_id
        km = AnalysisJob.from_mapping(
            {
                "run": {"name": "tcga-brca-km", "dataset": "tcga-brca", "min_nodes": 3},
                "analysis": {"kind": "km", "time": "time", "event": "event"},
            }
        )
        km_id = client.submit_run(km.to_json()).run_id
        for ran in (run_id, km_id):
            status = wait_for(
                lambda ran=ran: (s := client.get_run(ran).status) in TERMINAL and s, 120, ran
            )
            assert status == "finished", client.get_run(ran).error
        app = coordinator_dashboard(running.coordinator, load_kit(fed.kit_directory("coordinator")))
        dashboard = serve(app, "127.0.0.1:0")
        yield Deployment(fed, dashboard, run_id, km_id)
    finally:
        if dashboard is not None:
            dashboard.stop()
        for stop, _ in stops:
            stop.set()
        for _, thread in stops:
            thread.join(timeout=10)
        client.close()
        running.stop()


def log_in(driver: Any, deployment: Deployment, who: str) -> None:
    token = make_login_token(load_kit(deployment.fed.kit_directory(who)))
    driver.get(login_url(deployment.dashboard.url, token))
    assert f"{who} (" in driver.find_element("css selector", ".who").text


def rendered(driver: Any) -> list[int]:
    """Each chart's drawn points, once charts.js has drawn them all."""
    from selenium.webdriver.support.ui import WebDriverWait

    canvases = driver.find_elements("css selector", "canvas[data-chart]")
    WebDriverWait(driver, 20).until(
        lambda d: all(c.get_attribute("data-rendered") for c in canvases)
    )
    return [int(c.get_attribute("data-rendered")) for c in canvases]


def full_page(driver: Any, shoot: Callable[[Any, str], Path], name: str) -> None:
    """A screenshot of the whole page (the window grown to its height for the shot); for
    the docs (``BIOFED_SCREENSHOTS``) stored with a 256-colour palette, to stay small."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(max(height + 20, 600), 2400))
    try:
        shoot(driver, name)
    finally:
        driver.set_window_size(1280, 900)
    out = os.environ.get("BIOFED_SCREENSHOTS")
    if out:
        from PIL import Image

        target = Path(out) / f"{name}.png"
        with Image.open(target) as image:
            small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(target, optimize=True)
        assert target.stat().st_size < 200_000, f"{target} is too big for the docs"


def test_every_page_renders_with_data_in_chromium(
    chromium: Any, screenshot: Callable[[Any, str], Path], deployment: Deployment
) -> None:
    driver = chromium
    log_in(driver, deployment, "alice")
    # runs list: the id whole, as a link to its page
    link = driver.find_element("css selector", f'tr[data-run="{deployment.run_id}"] a')
    assert link.text == deployment.run_id
    assert "finished" in driver.find_element("css selector", "table.runs").text
    full_page(driver, screenshot, "coordinator-runs")

    link.click()
    assert driver.find_element("id", "run-id").text == deployment.run_id
    points = rendered(driver)
    assert len(points) >= 3, points  # c_index, c_index per site, privacy spend
    assert all(n > 0 for n in points), points
    captions = [f.text for f in driver.find_elements("css selector", "figcaption")]
    assert any(c.startswith("privacy spend per site") for c in captions), captions
    assert "train accepted" in driver.find_element("css selector", "table.replies").text
    full_page(driver, screenshot, "coordinator-run")

    driver.get(f"{deployment.dashboard.url}/runs/{deployment.km_id}")
    assert driver.find_element("id", "run-id").text == deployment.km_id
    (points,) = rendered(driver)  # the Kaplan–Meier curve
    assert points > 10
    assert driver.find_element("css selector", "table.result").text
    full_page(driver, screenshot, "coordinator-analysis")

    driver.get(f"{deployment.dashboard.url}/sites")
    table = driver.find_element("css selector", "table.sites").text
    assert all(site in table for site in SITES)
    assert "online" in table
    full_page(driver, screenshot, "coordinator-sites")

    driver.get(f"{deployment.dashboard.url}/audit")
    assert "admins" in driver.find_element("css selector", ".message").text  # alice may not
    log_in(driver, deployment, "admin")
    driver.get(f"{deployment.dashboard.url}/audit")
    status = driver.find_element("id", "audit-status").text
    assert status.startswith("Verified:"), status
    assert deployment.run_id in driver.find_element("css selector", "table.audit-runs").text
    full_page(driver, screenshot, "coordinator-audit")
