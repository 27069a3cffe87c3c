"""The dashboard in a real browser: Debian's headless Chromium driven through Selenium.

The test starts ``automl-vision dashboard RUN_DIR`` on a free localhost port, as a user
would, opens the leaderboard, checks that it lists the run's trials, clicks a trial's row
and checks that its detail opens. A screenshot is saved in the test's temporary folder.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import cli_env

CHROMIUM = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
DRIVER = ("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
WAIT = 180  # seconds; a limit for a busy machine, not a timing assertion


def _find(names) -> str | None:
    for n in names:
        path = shutil.which(n) or (n if Path(n).is_file() else None)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium, driver = _find(CHROMIUM), _find(DRIVER)
    if not chromium or not driver:
        pytest.skip("no Chromium found: install Debian's browser and driver with "
                    "'apt-get install -y chromium chromium-driver' to run the real-browser test")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1500,1600"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(WAIT)
    yield drv
    drv.quit()


@pytest.fixture()
def server(tiny_run, tmp_path):
    port = _free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "automl_vision.cli", "dashboard", str(tiny_run), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + WAIT
    while True:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the dashboard server did not start:\n" + (tmp_path / "dashboard.log").read_text())
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    printed = (tmp_path / "dashboard.log").read_text()
    assert f"automl-vision dashboard: {url}" in printed


def _wait(drv, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException

    try:
        # the page re-renders while it loads: an element read a moment ago may be gone, so try again
        return WebDriverWait(drv, WAIT, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: condition(d))
    except TimeoutException:
        drv.save_screenshot("/tmp/dashboard-browser-failure.png")
        raise AssertionError(f"timed out waiting for {what}; screenshot in /tmp/dashboard-browser-failure.png") from None


def _grid_column(drv, header: str) -> list[str]:
    """The cells of a column of the leaderboard grid, from its accessible table (the grid draws on a canvas)."""
    from selenium.webdriver.common.by import By

    grids = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    if not grids:
        return []
    grid = grids[0]
    heads = grid.find_elements(By.CSS_SELECTOR, 'th[role="columnheader"]')
    col = next((h.get_attribute("aria-colindex") for h in heads if h.get_attribute("textContent") == header), None)
    if col is None:
        return []
    cells = grid.find_elements(By.CSS_SELECTOR, f'td[role="gridcell"][aria-colindex="{col}"]')
    return [c.get_attribute("textContent") for c in cells]


def test_leaderboard_lists_trials_and_a_click_opens_the_detail(tiny_run, server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    trials = sorted(int(p.name) for p in (tiny_run / "trials").iterdir() if (p / "status.json").exists())
    browser.get(server + "/leaderboard")
    _wait(browser, lambda d: any(h.text == "Leaderboard" for h in d.find_elements(By.TAG_NAME, "h1")), "the leaderboard title")
    _wait(browser, lambda d: len(_grid_column(d, "trial")) == len(trials), "one leaderboard row per trial")
    shown = _grid_column(browser, "trial")
    assert sorted(int(t) for t in shown) == trials
    models = _grid_column(browser, "model")
    status = {n: json.loads((tiny_run / "trials" / f"{n:05d}" / "status.json").read_text()) for n in trials}
    assert sorted(models) == sorted(s["model"] for s in status.values())

    # the detail opens on the first row; click the last row of the grid to open another trial
    _wait(browser, lambda d: any(h.text.startswith(f"Trial {shown[0]}:") for h in d.find_elements(By.TAG_NAME, "h2")),
          "the detail of the first trial")
    target = int(shown[-1])
    grid = browser.find_element(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    row_height, header_height = 35, 35
    y = header_height + row_height * (len(shown) - 1) + row_height // 2
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", grid)
    ActionChains(browser).move_to_element_with_offset(grid, -grid.size["width"] // 2 + 15, -grid.size["height"] // 2 + y).click().perform()
    title = f"Trial {target}: {status[target]['model']}"
    _wait(browser, lambda d: any(h.text == title for h in d.find_elements(By.TAG_NAME, "h2")), f"the heading {title!r}")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert f"{status[target]['state'].lower()}" in page
    assert "Learning curves" in page and "Parameters" in page
    assert "Traceback" not in page
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "dashboard-leaderboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_every_page_renders_without_an_error(tiny_run, server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    for path, title in (("", f"Run {tiny_run.name}"), ("insight", "Search insight"), ("ensemble", "Ensemble results"),
                        ("errors", "Errors and explanations"), ("compare", "Compare runs")):
        browser.get(f"{server}/{path}")
        _wait(browser, lambda d: any(h.text == title for h in d.find_elements(By.TAG_NAME, "h1")), f"the {path or 'overview'} page")
        # let the page finish running (the status widget disappears) before looking for errors
        _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'), f"{path} to finish")
        assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), path
        assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]'), path
        assert "Page not found" not in browser.find_element(By.TAG_NAME, "body").text, path
        browser.save_screenshot(str(tmp_path / f"dashboard-{path or 'overview'}.png"))
    # the errors page shows the Grad-CAM overlay as an image
    browser.get(f"{server}/errors")
    _wait(browser, lambda d: "Grad-CAM for class" in d.find_element(By.TAG_NAME, "body").text, "the Grad-CAM overlay")
