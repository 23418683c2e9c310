"""The dashboard in a real browser (Debian's chromium, driven by playwright) on a live cluster."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, OpsCluster, run_async
else:
    from _ops_cluster import TOKEN, OpsCluster, run_async

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APT_TIMEOUT_S = 900
"""The one-time install of chromium may take this long; it is not a timing claim."""


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (the tests run as root)."""
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        assert apt is not None, "the browser test needs Debian's chromium, and apt-get is missing"
        install = [apt, "install", "-y", "--no-install-recommends", "chromium"]
        # No prompt may wait for a terminal that CI does not have.
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run = functools.partial(subprocess.run, timeout=APT_TIMEOUT_S, env=env)
        if run(install, check=False).returncode != 0:
            run([apt, "update"], check=True)
            run(install, check=True)
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing after apt-get install chromium"
    return CHROMIUM


# The first run on a fresh machine installs chromium inside this test's set-up.
@pytest.mark.timeout(APT_TIMEOUT_S + 300)
def test_dashboard_shows_servers_and_live_handoffs(
    ops_cluster: OpsCluster, chromium: Path, tmp_path: Path
) -> None:
    """The page shows a card per server; after a drain is started through the API, the drained
    server's card says draining and the drain's handoffs appear in the timeline, live."""
    cluster = ops_cluster

    async def open_sessions() -> str:
        async with cluster.connect() as client:
            for _ in range(3):
                session = await client.open_session(parts=["auth", "cart"])
                await session.call("auth", "login", "grace")
            return session.placements()["cart"].primary

    drained = run_async(open_sessions())
    last = httpx.get(f"{cluster.api_url}/api/history", params={"limit": 1}).json()
    after = last[-1]["sequence"] if last else 0
    try:
        screenshot = show_a_drain(cluster, chromium, tmp_path, drained, after)
    finally:
        httpx.post(
            f"{cluster.api_url}/api/servers/{drained}/undrain",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert screenshot.stat().st_size > 10_000
    run_async(cluster.wait_active(cluster.server_ids))


NEW_HANDOFF_SHOWN = """([after, drained]) => [...document.querySelectorAll('#timeline li')].some(
    (li) => li.dataset.kind === 'handoff' && Number(li.dataset.sequence) > after
        && li.dataset.reason === 'planned_maintenance'
        && li.textContent.includes(drained + ' \u2192'))"""
"""True once the timeline shows a handoff off `drained` recorded after sequence `after`."""


def show_a_drain(
    cluster: OpsCluster, chromium: Path, tmp_path: Path, drained: str, after: int
) -> Path:
    """Load the dashboard, drain `drained` through the API, watch the page; the screenshot."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(cluster.api_url + "/")
            expect(page.locator("article.card.server")).to_have_count(len(cluster.server_ids))
            for server_id in cluster.server_ids:
                expect(page.locator(f'article[data-server-id="{server_id}"]')).to_be_visible()
            expect(page.locator("#stream-state")).to_have_text("live")
            expect(page.locator("#map-version")).not_to_have_text("-")
            response = httpx.post(
                f"{cluster.api_url}/api/servers/{drained}/drain",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 202, response.text
            card = page.locator(f'article[data-server-id="{drained}"]')
            expect(card.locator(".badge.draining")).to_be_visible(timeout=30_000)
            page.wait_for_function(NEW_HANDOFF_SHOWN, arg=[after, drained], timeout=30_000)
            expect(page.locator("#stream-state")).to_have_text("live")
            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert errors == []
            return screenshot
        finally:
            browser.close()
