"""The agent's UI in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium): the graph of the seed config, why a container
is not shipped, live debugging of a test container, the keyboard.

Skipped, with the reason, when Selenium, the browser or its driver is missing
(``scripts/test`` installs them). Screenshots of each view are kept under
``$MINILOG_UI_ARTIFACTS`` (default: ``<tmp>/minilog-ui-artifacts``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from minilog.agent.runtime import Agent
from minilog.agent.server import AgentServer
from minilog.testing import FakeLoki

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("MINILOG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MINILOG_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get("MINILOG_UI_ARTIFACTS")
    or Path(tempfile.gettempdir()) / "minilog-ui-artifacts"
)
SEED = Path(__file__).parents[1] / "data" / "alloy" / "seed-config.alloy"

_T = TypeVar("_T")


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (scripts/test installs the dev extras)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install chromium chromium-driver"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    reason = _browser_missing()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1366,860",  # a laptop screen
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def seed_config(push_url: str, keep_also: str) -> str:
    """The seed config unchanged but for the push URL, the test container's name added
    to the keep rule, and live debugging on."""
    text = SEED.read_text()
    text = text.replace("http://loki:3100/loki/api/v1/push", push_url)
    regex = "(web-gateway|order-api|fulfillment-worker)"
    assert regex in text
    text = text.replace(regex, regex[:-1] + "|" + keep_also + ")")
    return text + "\nlivedebugging {\n  enabled = true\n}\n"


async def in_thread(fn: Callable[[], _T]) -> _T:
    # Selenium blocks; the agent serves the page on this event loop.
    return await asyncio.to_thread(fn)


def shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_for(driver: Any, css: str, text: str = "", timeout: float = 20) -> Any:
    from selenium.common.exceptions import (
        StaleElementReferenceException as StaleElement,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d: Any) -> Any:
        for el in d.find_elements(By.CSS_SELECTOR, css):
            if text in el.text:
                return el
        return False

    # A view being replaced while it is read is looked at again.
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElement]
    )
    return wait.until(found)


async def test_the_ui_in_chromium(
    browser: Any, docker_containers: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    run = uuid.uuid4().hex[:8]
    kept, other = f"minilog-ui-{run}", f"minilog-ui-other-{run}"
    marker = f"marker-{run}"
    docker_containers(
        "while true; do if [ -f /go ]; then echo " + marker + "; rm /go; fi;"
        " sleep 0.02; done",
        name=kept,
    )
    docker_containers("echo hello from the other one; sleep 600", name=other)
    async with FakeLoki() as loki:
        config = tmp_path / "config.alloy"
        config.write_text(seed_config(loki.push_url, kept))
        agent = Agent(config, storage_path=tmp_path / "data")
        server = AgentServer(agent, host="127.0.0.1", port=0)
        await agent.start()
        await server.start()
        try:
            await agent.wait_discovered()
            url = server.url + "/"

            # -- the graph: the seed config's four components, edges left to right
            def graph() -> tuple[list[str], list[tuple[str, str]]]:
                browser.get(url + "#/graph")
                wait_for(browser, "svg.graph a.node-link")
                nodes = browser.find_elements(By.CSS_SELECTOR, "svg.graph a.node-link")
                edges = browser.find_elements(By.CSS_SELECTOR, "svg.graph path.edge")
                shot(browser, "graph")
                return (
                    [n.get_attribute("data-id") for n in nodes],
                    [
                        (e.get_attribute("data-from"), e.get_attribute("data-to"))
                        for e in edges
                    ],
                )

            nodes, edges = await in_thread(graph)
            assert nodes == [
                "discovery.docker.containers",
                "discovery.relabel.logs",
                "loki.source.docker.app_logs",
                "loki.write.endpoint",
            ]
            assert sorted(edges) == [
                ("discovery.docker.containers", "discovery.relabel.logs"),
                ("discovery.relabel.logs", "loki.source.docker.app_logs"),
                ("loki.source.docker.app_logs", "loki.write.endpoint"),
            ]

            # -- the keyboard: Tab reaches a graph node, Enter opens its detail
            def keyboard() -> str:
                body = browser.find_element(By.TAG_NAME, "body")
                for _ in range(12):
                    body = browser.switch_to.active_element
                    if body.get_attribute("data-id") == "loki.source.docker.app_logs":
                        break
                    body.send_keys(Keys.TAB)
                body.send_keys(Keys.ENTER)
                wait_for(browser, "main h1", "loki.source.docker.app_logs")
                shot(browser, "component")
                text = browser.find_element(By.TAG_NAME, "main").text
                # Shortcuts: c = components.
                browser.find_element(By.TAG_NAME, "body").send_keys("c")
                wait_for(browser, "main h1", "Components")
                shot(browser, "components")
                return text

            detail = await in_thread(keyboard)
            assert "Arguments" in detail and "Debug info" in detail

            # -- why a container outside the seed's three services is not shipped
            def targets() -> tuple[str, str]:
                browser.get(url + "#/targets")
                row = wait_for(browser, f'details.target[data-name="{other}"]')
                row.find_element(By.TAG_NAME, "summary").click()
                shipped = wait_for(browser, f'details.target[data-name="{kept}"]')
                shot(browser, "targets")
                return row.text, shipped.get_attribute("data-shipped")

            text, kept_shipped = await in_thread(targets)
            assert "dropped by rule 2 (keep)" in text
            assert "rule 1 (replace)" in text and f'+service="{other}"' in text
            assert kept_shipped == "true"

            # -- live debugging: a line the test container writes shows up
            def watch() -> None:
                browser.get(url + "#/debug/loki.source.docker.app_logs")
                wait_for(browser, "#status", "watching")

            await in_thread(watch)
            exec_done = time.monotonic()
            (kept_container,) = [c for c in docker_containers.started if c.name == kept]
            await in_thread(lambda: kept_container.exec_run(["touch", "/go"]))
            exec_done = time.monotonic()

            def seen() -> float:
                try:
                    wait_for(browser, "#entries td.line", marker, timeout=10)
                except Exception:
                    shot(browser, "live-debugging-failed")
                    print(kept_container.logs().decode()[-500:])
                    raise
                latency = time.monotonic() - exec_done
                shot(browser, "live-debugging")
                return latency

            latency = await in_thread(seen)
            print(f"live debugging: the line showed {latency:.3f} s after docker exec")
            row = await in_thread(
                lambda: browser.find_element(By.CSS_SELECTOR, "#entries tr").text
            )
            assert f'service="{kept}"' in row
        finally:
            await server.aclose()
            await agent.aclose()
    if os.environ.get("MINILOG_UI_DOCS_SCREENSHOT"):
        # Refreshes the README's picture (docs/ui-targets.png) from this run.
        shutil.copy(ARTIFACTS / "targets.png", Path(__file__).parents[2] / "docs")
