"""The report page in a real browser: headless Debian chromium opens the generated --quick report from disk.

Never skipped in CI: .ci/run installs chromium and sets SHIFTLAB_REQUIRE_BROWSER=1, which turns a missing
browser into a failure. Elsewhere the test is skipped only when chromium is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM_OPTIONS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--disable-sync")


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _find("chromium", "chromium-browser"), _find("chromedriver")
    if chromium is None or driver_path is None:
        if os.environ.get("SHIFTLAB_REQUIRE_BROWSER"):
            pytest.fail("SHIFTLAB_REQUIRE_BROWSER is set but chromium/chromedriver are not installed "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="shiftlab-chromium-")
    for arg in (*CHROMIUM_OPTIONS, f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def opened(browser, report_dir):
    """The report page loaded in the browser, and its saved results."""
    browser.get((report_dir / "index.html").resolve().as_uri())
    browser.execute_script("return document.readyState")
    results = json.loads((report_dir / "results.json").read_text())
    return browser, results


def test_every_image_loaded(opened):
    driver, results = opened
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) >= 10, images  # classic demos, six figures, thumbnails
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
    assert {src for src, _, _ in images} == {f for f in results["figures"].values()}


def test_headline_numbers_are_on_the_page(opened):
    driver, results = opened
    text = driver.find_element("tag name", "body").text
    audits = results["audits"]
    for key, name in (("consistency.crop", "consistency"), ("consistency.circular", "consistency"),
                      ("worst_case", "worst_case_stability"), ("sweep.crop", "top1_change"),
                      ("consistency.crop", "accuracy")):
        metric = audits[key]["result"]["metrics"][name]
        value = f"{100 * metric['value']:.1f}%"
        interval = f"{100 * metric['ci'][0]:.1f}%–{100 * metric['ci'][1]:.1f}%"
        assert value in text and interval in text and f"n = {metric['n']}" in text, (value, interval)
    # the pretrained network's answers on the cat and the coffee are on the page
    for p in results["predictions"]:
        assert p["image"] in text and p["top1_name"] in text


def test_console_has_no_errors(opened):
    driver, _ = opened
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def test_page_makes_no_network_request(opened):
    driver, _ = opened
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
    assert urls and all(u.startswith("file://") for u in urls), urls


# ------------------------------------------------------------------ the page read by a person (issue 23, point 7)


def test_no_sideways_scroll_at_700px(opened, report_dir):
    """At 700 px the page never scrolls sideways: tables scroll inside their box, images and commands fit."""
    driver, _ = opened
    try:
        driver.set_window_size(700, 900)
        driver.get((report_dir / "index.html").resolve().as_uri())
        inner, scroll = driver.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]")
        assert inner <= 700
        wide = driver.execute_script(
            "return Array.from(document.querySelectorAll('main > *, section > *'))"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
            ".map(e => e.tagName + '.' + e.className)")
        assert scroll <= inner, (scroll, inner, wide)
    finally:
        driver.set_window_size(1200, 900)
        driver.get((report_dir / "index.html").resolve().as_uri())


def test_jaggedness_legend_has_one_entry_per_photo(opened):
    """The figure is a PNG: its legend is checked on the figure object drawn from the page's own results."""
    from shiftlab.report.plots import plot_jaggedness

    _, results = opened
    fig = plot_jaggedness(results)
    (legend,) = fig.legends
    assert len(legend.get_texts()) == len(results["data"]["names"]) == results["data"]["n_images"]


def _section_text(driver, anchor):
    return driver.find_element("css selector", f"section#{anchor}").text


def test_labels_name_the_grid_and_the_sweep(opened):
    driver, results = opened
    budget = results["settings"]["budget"]
    fixes, summary = _section_text(driver, "fixes"), _section_text(driver, "summary")
    g, fg, fs = budget["grid"], budget["fix_grid"], budget["fix_sweep"]
    assert f"stable over a {fg}x{fg} grid of 1-px shifts" in fixes
    assert f"top-1 kept over a {fs}-step diagonal sweep" in fixes
    assert f"every shift of a {g}x{g} grid of 1-px shifts" in summary
    assert f"over a {budget['sweep']}-step diagonal sweep" in summary
    assert "stable over grid" not in fixes and "over a 1-px step\n" not in fixes


def test_reproduce_commands_match_their_sections_protocol(opened):
    driver, _ = opened

    def commands(css):
        return [e.text for e in driver.find_elements("css selector", f"{css} code.cmd")]

    table = commands("section#summary .reproduce")
    assert len(table) == 1 and "--transform rotate:0," in table[0] and "--predictions" in table[0]
    jagged = commands("section#jaggedness .reproduce")
    assert jagged and all("--transform diagonal:" in c for c in jagged)
    inv = commands("section#invariances .reproduce")
    assert len(inv) == 3 and all(any(f"--transform {k}:" in c for k in ("rotate", "scale", "brightness"))
                                 for c in inv)
    fixes = commands("section#fixes .reproduce")
    assert fixes and all("--fix " in c or "shiftlab fix " in c or "--transform diagonal:" in c
                         or "--transform grid:" in c or "--transform crop:" in c or "--transform circular:" in c
                         for c in fixes)
