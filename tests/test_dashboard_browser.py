"""The dashboard in a real browser: Debian's headless Chromium driven through Selenium.

The tests start ``automl-vision dashboard RUN_DIR`` on a free localhost port, as a user
would. On the tiny real search: the leaderboard lists the run's trials and a click on a
row opens its detail; every page renders. On a large run (120 trials of 200-250 epochs,
written by tests/test_dashboard_scale.py without training), at 1280 and 1920 px wide: the
text, the sizes of the chart elements and where they sit are measured (no label cut or
hidden, no legend over an axis title, no "None" in a table), and every file the pages load
comes from the dashboard's own server. Screenshots are saved in the test's temporary folder.
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


def _serve(runs: list[Path], tmp_path: Path):
    port = _free_port()
    log_path = tmp_path / f"dashboard-{port}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "automl_vision.cli", "dashboard", *map(str, runs), "--port", str(port)],
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
            pytest.fail("the dashboard server did not start:\n" + log_path.read_text())
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    printed = log_path.read_text()
    assert f"automl-vision dashboard: {url}" in printed
    assert f"URL: {url}" in printed  # Streamlit was told the address: it looked up no external one


@pytest.fixture()
def server(tiny_run, tmp_path):
    yield from _serve([tiny_run], tmp_path)


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> Path:
    from test_dashboard_scale import write_big_run

    return write_big_run(tmp_path_factory.mktemp("runs") / "big")


@pytest.fixture()
def big_server(big_run, tiny_run, tmp_path):
    yield from _serve([big_run, tiny_run], tmp_path)


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


# ------------------------------------------------------------------ a large run, measured
WIDTHS = (1280, 1920)


def _open(drv, url: str, title: str):
    from selenium.webdriver.common.by import By

    drv.get(url)
    _wait(drv, lambda d: any(h.text.startswith(title) for h in d.find_elements(By.TAG_NAME, "h1")), f"the page {title!r}")
    _wait(drv, lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'), f"{url} to finish")
    assert not drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), url
    assert not drv.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]'), url


def _tab(drv, name: str):
    from selenium.webdriver.common.by import By

    tab = next(t for t in drv.find_elements(By.CSS_SELECTOR, '[role="tab"]') if t.get_attribute("textContent").strip() == name)
    tab.click()


def _chart(drv, key: str, what: str):
    """The plotly chart with this Streamlit key, once drawn (its svg has a size)."""
    from selenium.webdriver.common.by import By

    def drawn(d):
        found = d.find_elements(By.CSS_SELECTOR, f".st-key-{key} .main-svg")
        return found and found[0].rect["width"] > 100 and d.find_elements(By.CSS_SELECTOR, f".st-key-{key} .xtick, "
                                                                                       f".st-key-{key} .ytick")
    _wait(drv, drawn, what)
    chart = drv.find_element(By.CSS_SELECTOR, f".st-key-{key}")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", chart)
    time.sleep(0.5)
    return chart


def _boxes(chart, selector: str) -> list[tuple[str, dict]]:
    from selenium.webdriver.common.by import By

    return [(e.get_attribute("textContent"), e.rect) for e in chart.find_elements(By.CSS_SELECTOR, selector)]


def _overlap(a: dict, b: dict, slack: float = 1.0) -> bool:
    return (a["x"] + a["width"] - slack > b["x"] and b["x"] + b["width"] - slack > a["x"]
            and a["y"] + a["height"] - slack > b["y"] and b["y"] + b["height"] - slack > a["y"])


def _inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def _labels_readable(chart, selector: str, what: str) -> list[str]:
    """The chart's labels: every one drawn with a size, inside the chart, none over another."""
    from selenium.webdriver.common.by import By

    svg = chart.find_element(By.CSS_SELECTOR, ".main-svg").rect
    boxes = [(t, r) for t, r in _boxes(chart, selector) if t.strip()]
    assert boxes, f"{what}: no label"
    for text, r in boxes:
        assert r["width"] > 0 and _inside(r, svg), f"{what}: label {text!r} at {r} is cut by the chart's edge {svg}"
    for i, (t1, r1) in enumerate(boxes):
        for t2, r2 in boxes[i + 1:]:
            assert not _overlap(r1, r2), f"{what}: labels {t1!r} and {t2!r} overlap"
    return [t for t, _ in boxes]


def _cut_text(drv, selector: str) -> list[str]:
    """Texts under ``selector`` that do not fit their box (shown cut, with an ellipsis)."""
    return drv.execute_script(
        "return [...document.querySelectorAll(arguments[0])].flatMap(e => [e, ...e.querySelectorAll('*')])"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)", selector)


def _grid_cells(drv) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.get_attribute("textContent") for c in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] '
                                                                                      'td[role="gridcell"]')]


def test_a_large_run_reads_well_at_1280_and_1920_px(big_run, tiny_run, big_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    status = {int(p.parent.name): json.loads(p.read_text()) for p in big_run.glob("trials/*/status.json")}
    longest = max(status, key=lambda n: status[n]["epochs"] if status[n]["state"] == "COMPLETE" else -1)
    assert status[longest]["epochs"] >= 200
    n_varying = 9  # parameters that take two values or more (tests/test_dashboard_scale.py)
    for width in WIDTHS:
        browser.set_window_size(width, 1300)

        # overview: the new states counted, no headline number cut
        _open(browser, big_server, "Run big")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "12 skipped (no time)" in body and "5 not run" in body and "waiting" not in body
        assert _cut_text(browser, '[data-testid="stMetricValue"]') == []
        assert "None" not in _grid_cells(browser)
        browser.save_screenshot(str(tmp_path / f"big-overview-{width}.png"))

        # leaderboard opened from a link to a trial: one sort control, note beside the state, "—" for missing
        _open(browser, f"{big_server}/leaderboard?trial={longest}", "Leaderboard")
        _wait(browser, lambda d: any(h.text.startswith(f"Trial {longest}:") for h in d.find_elements(By.TAG_NAME, "h2")),
              "the trial the link names")
        assert f"trial={longest}" in browser.current_url
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Sort by" not in body and "Why it stopped" not in body  # a complete trial
        grid = browser.find_element(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
        heads = _wait(browser, lambda d: [h.get_attribute("textContent") for h in grid.find_elements(
            By.CSS_SELECTOR, 'th[role="columnheader"]')], "the leaderboard's columns")
        assert heads[:4] == ["rank", "trial", "state", "note"]
        scroller = grid.find_element(By.CSS_SELECTOR, ".dvn-scroller")
        browser.execute_script("arguments[0].scrollTop = arguments[0].scrollHeight", scroller)
        _wait(browser, lambda d: "not run" in _grid_column(d, "state"), "the last rows of the leaderboard")
        states = _grid_column(browser, "state")
        assert "skipped (no time)" in states and "pruned" not in states[-5:] and "waiting" not in states
        assert "None" not in _grid_cells(browser)
        curve = _chart(browser, f"curve_fig_{longest}", "the learning curve")
        ticks = _labels_readable(curve, ".xtick text", "learning curve epochs")
        assert 3 <= len(ticks) <= 15 and max(int(t.replace(",", "")) for t in ticks) >= 200
        browser.save_screenshot(str(tmp_path / f"big-leaderboard-{width}.png"))

        # search insight: every importance label drawn; parallel coordinates not clipped, objective titled
        _open(browser, f"{big_server}/insight", "Search insight")
        _tab(browser, "Parameter importances")
        chart = _chart(browser, "importances", "the importance chart")
        labels = _labels_readable(chart, ".ytick text", "importances")
        assert len(labels) == n_varying and "image_size" not in labels and "ema" not in labels
        assert len(chart.find_elements(By.CSS_SELECTOR, ".bars .point")) == n_varying
        browser.save_screenshot(str(tmp_path / f"big-importances-{width}.png"))
        _tab(browser, "Parallel coordinates")
        chart = _chart(browser, "parallel", "the parallel coordinates")
        axes = _labels_readable(chart, ".xtick text", "parallel-coordinates axes")
        assert axes[0] == "validation accuracy(objective)" and "image_size" not in axes  # on two lines
        svg = chart.find_element(By.CSS_SELECTOR, ".main-svg").rect
        for text, r in _boxes(chart, ".annotation-text"):  # the values along each axis
            assert _inside(r, svg), f"axis value {text!r} is cut at {r}"
        browser.save_screenshot(str(tmp_path / f"big-parallel-{width}.png"))

        # timeline: lanes per worker, the states, the final steps, the budget lines; legend clear of the plot
        _open(browser, f"{big_server}/timeline", "Timeline")
        chart = _chart(browser, "timeline", "the timeline")
        legend = [t for t, _ in _boxes(chart, ".legendtext")]
        assert {"complete", "pruned", "skipped (no time)", "failed", "final steps"} <= set(legend)
        lanes = _labels_readable(chart, ".ytick text", "timeline lanes")
        assert set(lanes) == {"gpu-box-4101", "gpu-box-4102", "final steps"}
        notes = _labels_readable(chart, ".annotation-text", "budget lines")
        assert any("time budget ends" in n for n in notes) and any("trials stop" in n for n in notes)
        plot = chart.find_element(By.CSS_SELECTOR, ".nsewdrag").rect
        assert not _overlap(chart.find_element(By.CSS_SELECTOR, ".legend").rect, plot)
        browser.save_screenshot(str(tmp_path / f"big-timeline-{width}.png"))

        # compare the big run with the tiny one: the different data said, the legend off the axis titles
        _open(browser, f"{big_server}/compare", "Compare runs")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "different classes" in body and "big: 12 classes" in body and "tiny: 10 classes" in body
        chart = _chart(browser, "cmp_history", "the best-so-far chart")
        legend = chart.find_element(By.CSS_SELECTOR, ".legend").rect
        for title in chart.find_elements(By.CSS_SELECTOR, ".xtitle, .ytitle"):
            assert not _overlap(legend, title.rect), f"the legend covers {title.text!r}"
        assert "None" not in _grid_cells(browser)
        browser.save_screenshot(str(tmp_path / f"big-compare-{width}.png"))

    # everything the pages loaded came from the dashboard itself
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and [u for u in loaded if not u.startswith((big_server, "data:", "blob:"))] == []
