"""`diffseg view`'s gallery in a real browser: Debian's Chromium (not a downloaded one),
driven headless by Playwright, opening the page from file:// as a user would.

Uses only the CLI ($DIFFSEG_CLI, else cargo builds it), not the Python package. Without
Chromium or Playwright the tests skip, saying so; with DIFFSEG_REQUIRE_BROWSER=1 (CI) they
fail instead. With DIFFSEG_GALLERY_SCREENSHOT=PATH the screenshot is also saved there
(how docs/gallery.png was made)."""

import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

REPOSITORY = pathlib.Path(__file__).resolve().parents[3]
TINY_WEIGHTS = REPOSITORY / "crates" / "diffseg-sd" / "tests" / "fixtures" / "tiny"
PHOTOS = REPOSITORY / "examples" / "images"
# The tiny random-weight model gives one segment per image at the paper's τ; several here.
TAU = 0.004
CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def missing(reason: str):
    """Skips, or fails where the browser is required (CI)."""
    if os.environ.get("DIFFSEG_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and DIFFSEG_REQUIRE_BROWSER=1 requires the browser test")
    pytest.skip(f"{reason}: the gallery was not checked in a browser")


def diffseg(*arguments):
    cli = os.environ.get("DIFFSEG_CLI")
    command = [cli] if cli else ["cargo", "run", "--quiet", "--release", "--locked",
                                 "-p", "diffseg-cli", "--"]
    subprocess.run(command + [str(argument) for argument in arguments], cwd=REPOSITORY,
                   check=True, timeout=900)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> pathlib.Path:
    """The example photos segmented with the tiny model."""
    out = tmp_path_factory.mktemp("gallery") / "results"
    diffseg("segment", PHOTOS, "--out", out, "--weights", TINY_WEIGHTS, "--offline",
            "--tau", TAU, "--quiet")
    return out


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_gallery(browser, index: pathlib.Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(index.as_uri())
    # Every image shown has loaded: the relative links work from file://.
    page.wait_for_function(
        "Array.from(document.querySelectorAll('main > figure:not([hidden]) img'))"
        ".every(image => image.complete && image.naturalWidth > 0)", timeout=30_000)
    return page, errors, requests


def json_counts(results: pathlib.Path) -> dict:
    counts = {}
    for path in sorted(results.rglob("*.json")):
        name = path.relative_to(results).with_suffix("").as_posix()
        counts[name] = len(json.loads(path.read_text())["segments"])
    return counts


def interior_pixel(labels: np.ndarray) -> tuple:
    """A pixel (x, y) well inside its segment: the label is the same all around it, so
    the gallery's smaller hover map and the mouse's rounding agree on it."""
    height, width = labels.shape
    radius = max(height, width) // 40
    for y in range(radius, height - radius, 3):
        for x in range(radius, width - radius, 3):
            window = labels[y - radius:y + radius + 1, x - radius:x + radius + 1]
            if (window == labels[y, x]).all():
                return x, y
    raise AssertionError("no segment is large enough to hover in")


def test_the_gallery_shows_every_result_with_its_segments_and_hovering_names_them(
        browser, results):
    diffseg("view", results, "--images", PHOTOS)
    page, errors, requests = open_gallery(browser, results / "index.html")

    # The DOM has one figure per result, with the JSON's segment count and legend.
    figures = page.eval_on_selector_all(
        "main > figure",
        "figures => figures.map(f => [f.dataset.image, Number(f.dataset.segments),"
        " f.querySelectorAll('.legend li').length])")
    counts = json_counts(results)
    assert len(counts) == 4
    assert {name: count for name, count, _ in figures} == counts
    assert all(count == legend for _, count, legend in figures)
    assert all(count > 1 for count in counts.values())

    # Hovering a segment shows its number and area, as the label PNG and JSON have them.
    labels = np.asarray(Image.open(results / "astronaut.png"))
    x, y = interior_pixel(labels)
    label = int(labels[y, x])
    segments = json.loads((results / "astronaut.json").read_text())["segments"]
    area = next(segment["area"] for segment in segments if segment["label"] == label)
    stage = page.locator('figure[data-image="astronaut"] .stage')
    box = stage.bounding_box()
    page.mouse.move(box["x"] + (x + 0.5) * box["width"] / labels.shape[1],
                    box["y"] + (y + 0.5) * box["height"] / labels.shape[0])
    hover = page.locator('figure[data-image="astronaut"] output.hover')
    page.wait_for_function(
        "() => document.querySelector('figure[data-image=\"astronaut\"] output.hover')"
        ".textContent.length > 0", timeout=10_000)
    text = hover.text_content()
    match = re.fullmatch(r"segment (\d+): ([\d,]+) px \((<?[\d.]+)%\)", text)
    assert match, text
    assert int(match[1]) == label
    assert int(match[2].replace(",", "")) == area
    assert page.locator("#tooltip").is_visible()
    assert page.locator('figure[data-image="astronaut"] .legend li.active').get_attribute(
        "data-label") == str(label)

    # The screenshot is not blank: the photos, overlays and highlight were drawn.
    shot = results.parent / "gallery.png"
    page.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"a blank-looking page (pixel std {pixels.std():.1f})"
    if os.environ.get("DIFFSEG_GALLERY_SCREENSHOT"):
        shutil.copy(shot, os.environ["DIFFSEG_GALLERY_SCREENSHOT"])

    assert errors == [], errors
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    page.close()


def test_pages_and_search_show_a_share_of_the_figures(browser, results, tmp_path):
    paged = tmp_path / "results"
    shutil.copytree(results, paged)
    (paged / "index.html").unlink(missing_ok=True)
    diffseg("view", paged, "--page-size", "3")
    page, errors, _ = open_gallery(browser, paged / "index.html")
    shown = "() => Array.from(document.querySelectorAll('main > figure:not([hidden])'), f => f.dataset.image)"
    names = sorted(json_counts(paged))
    assert page.evaluate(shown) == names[:3]
    assert page.locator("#page").text_content() == "page 1 of 2 (4 results)"
    assert page.is_disabled("#previous") and not page.is_disabled("#next")
    page.click("#next")
    assert page.is_disabled("#next") and not page.is_disabled("#previous")
    assert page.evaluate(shown) == names[3:]
    # The images of a page load when it is shown (lazily).
    page.wait_for_function(
        "Array.from(document.querySelectorAll('main > figure:not([hidden]) img'))"
        ".every(image => image.complete && image.naturalWidth > 0)", timeout=30_000)
    page.fill("#filter", "chel")
    assert page.evaluate(shown) == ["chelsea"]
    assert errors == [], errors
    page.close()
