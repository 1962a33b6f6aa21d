"""The site operator's dashboard in a real headless Chromium, served by uvicorn over a real
site folder: log in with a login link made with the site's kit, load every page, approve a
bundle by clicking, find the approval in the audit log page, see the ledger chart drawn.

``BIOFED_SCREENSHOTS=docs/images/dashboard`` saves the docs' screenshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from web_site_setup import SiteFolder, build_site

from biofed.governance import ApprovalStore
from biofed.web import (
    RunningDashboard,
    login_url,
    make_login_token,
    serve_dashboard,
    site_dashboard,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SiteFolder, RunningDashboard]]:
    site = build_site(tmp_path_factory.mktemp("web-site-browser"), hostile=False)
    running = serve_dashboard(site_dashboard(site.kit_dir, site.node_toml), "127.0.0.1:0")
    try:
        yield site, running
    finally:
        running.stop()


def _wait(driver: Any, css: str, timeout: float = 20.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_an_operator_reviews_approves_and_finds_it_in_the_audit_log(
    chromium: Any,
    served: tuple[SiteFolder, RunningDashboard],
    screenshot: Callable[[object, str], Path],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    site, running = served
    driver = chromium
    driver.get(login_url(running.url, make_login_token(site.kit())))
    _wait(driver, f'tr[data-digest="{site.v2}"]')
    assert driver.current_url.endswith("/review")
    assert "hosp-a (site)" in driver.find_element(By.CSS_SELECTOR, ".who").text

    driver.find_element(By.CSS_SELECTOR, f'tr[data-digest="{site.v2}"] a').click()
    _wait(driver, "pre.diff span.add")
    assert "l2=0.01" in driver.find_element(By.CSS_SELECTOR, "pre.diff").text
    by = driver.find_element(By.NAME, "by")
    by.clear()
    by.send_keys("dr-ops")
    driver.find_element(By.NAME, "note").send_keys("read v2, ticket 57")
    screenshot(driver, "site-review")

    driver.find_element(By.ID, "approve").click()
    _wait(driver, "#done")
    assert site.v2 in driver.find_element(By.ID, "done").text
    assert site.v2 in {a.digest for a in ApprovalStore(site.kit_dir / "approvals.json").list()}
    screenshot(driver, "site-approvals")

    driver.get(f"{running.url}/agreements")
    state = _wait(driver, 'tr[data-agreement="brca-cox"] .state')
    assert state.text.startswith("in force")
    screenshot(driver, "site-agreements")

    driver.get(f"{running.url}/ledger")
    canvas = _wait(driver, "canvas[data-chart]")
    WebDriverWait(driver, 20).until(lambda d: canvas.get_attribute("data-rendered"))
    assert int(canvas.get_attribute("data-rendered")) > 0
    screenshot(driver, "site-ledger")

    driver.get(f"{running.url}/audit")
    verdict = _wait(driver, "p.verify")
    assert verdict.get_attribute("data-ok") == "true", verdict.text
    newest = driver.find_elements(By.CSS_SELECTOR, 'tr[data-event="bundle.approved"]')[0]
    assert site.v2 in newest.text
    assert '"via": "dashboard"' in newest.text
    assert '"by": "dr-ops"' in newest.text
    screenshot(driver, "site-audit")

    driver.get(f"{running.url}/review")
    assert not driver.find_elements(By.CSS_SELECTOR, f'tr[data-digest="{site.v2}"]')
