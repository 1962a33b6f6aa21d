"""A real headless Chromium for the dashboards' browser tests (Debian's chromium and
chromium-driver, driven by Selenium; scripts/ci_deps.sh installs them on a fresh machine).

``BIOFED_SCREENSHOTS=DIR`` makes :func:`screenshot` also save into ``DIR`` (the docs use
``docs/images/dashboard``); otherwise screenshots go to the test's temp folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"none of {', '.join(names)} is installed: run scripts/ci_deps.sh "
        "(Debian packages chromium and chromium-driver)"
    )


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """A headless Chromium WebDriver (1280×900), shared by the session's browser tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the suite runs as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    service = Service(executable_path=_binary("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[object, str], Path]:
    """``screenshot(driver, "name")`` saves the page as PNG (and into $BIOFED_SCREENSHOTS)."""

    def take(driver: object, name: str) -> Path:
        target = tmp_path / f"{name}.png"
        driver.save_screenshot(str(target))  # type: ignore[attr-defined]
        out = os.environ.get("BIOFED_SCREENSHOTS")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, Path(out) / f"{name}.png")
        assert target.stat().st_size > 1000, f"screenshot {name} is empty"
        return target

    return take
