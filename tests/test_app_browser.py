"""End to end in a real browser (Debian's chromium, driven by Playwright): draw with the mouse on the support
and query canvases, press Classify, read the prediction from the page. Also saves docs/demo.png.

CI installs chromium (.ci/run); locally: apt-get install -y chromium chromium-driver.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT = 60_000  # ms; software rendering on a busy 2-core machine is slow, and every wait is a readiness check
SCREENSHOT = ROOT / "docs" / "demo.png"


@pytest.fixture(scope="module")
def server():
    demo = app.build_demo(seed=0)  # the same random episodes every run: a reproducible screenshot
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser_page(server):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium chromium-driver"
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT)
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith((server, "data:", "blob:")) else None)
        page.goto(server)
        yield page, outside
        browser.close()


def wait_text(page: Page, selector: str, text: str) -> None:
    page.wait_for_function("([sel, text]) => { const e = document.querySelector(sel); "
                           "return e !== null && e.innerText.includes(text); }", arg=[selector, text])


def wait_idle(page: Page, selector: str) -> None:
    """Until gradio's progress overlay (processing / queue) has left the element."""
    page.wait_for_function("(sel) => { const t = document.querySelector(sel).innerText; "
                           "return !t.includes('processing') && !t.includes('queue:'); }", arg=selector)


def text(page: Page, selector: str) -> str:
    """An element's text without gradio's progress overlay, which a following event may bring back."""
    lines = page.locator(selector).inner_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith(("processing", "queue:")))


def stroke(page: Page, pad: str, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through points given as offsets (px) from the centre of the pad's drawing area."""
    canvas = page.locator(f"{pad} canvas").first
    canvas.scroll_into_view_if_needed()  # the mouse only reaches what is in the viewport
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + points[0][0], cy + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(cx + x, cy + y, steps=12)
    page.mouse.up()


def test_draw_and_classify(browser_page):
    page, outside = browser_page
    wait_text(page, "#mn-status", "Copy one")  # the page loaded with a random support set
    # The brush is already selected in both pads: the first stroke draws (gradio would start with none).
    page.wait_for_function("() => document.querySelectorAll('.mn-pad button.highlight').length === 2")

    page.click("#mn-clear")
    wait_text(page, "#mn-status", "Cleared")
    number = page.locator("#mn-n input[type=number]")
    number.fill("2")
    number.press("Enter")
    wait_text(page, "#mn-names", "")  # the names box follows N
    page.wait_for_function("() => document.querySelector('#mn-names textarea, #mn-names input').value === 'A, B'")

    stroke(page, "#mn-support-pad", [(-90, 0), (90, 0)])  # class A: a horizontal bar
    wait_text(page, "#mn-status", "class 'B' has no example")
    page.click("#mn-next")
    wait_text(page, "#mn-slot", "class B")
    stroke(page, "#mn-support-pad", [(0, -90), (0, 90)])  # class B: a vertical bar
    wait_text(page, "#mn-status", "query canvas is blank")

    stroke(page, "#mn-query-pad", [(10, -70), (5, 75)])  # a query: a slightly slanted vertical bar
    page.click("#mn-classify")
    wait_text(page, "#mn-prediction", "Prediction: B")
    for selector in ("#mn-prediction", "#mn-attention"):  # the live update of the last stroke may follow
        wait_idle(page, selector)
    assert text(page, "#mn-prediction").startswith("Prediction: B")
    captions = text(page, "#mn-attention")
    weight_b = float(captions.split("B·1: ")[1].split()[0])
    assert weight_b > 0.5, captions  # the vertical support bar gets the attention
    page.wait_for_selector("#mn-heatmap .js-plotly-plot")
    page.wait_for_selector("#mn-probs .js-plotly-plot")
    assert not outside, f"the page fetched from outside: {outside}"


def test_uploads_batch_and_bad_file(browser_page, tmp_path):
    """Upload buttons: support images fill slots from the selected one; several queries at once; a
    non-image gets a warning and leaves the results as they were."""
    page, outside = browser_page
    examples = sorted((ROOT / "assets" / "examples" / "omniglot").glob("*/*"))
    page.click("#mn-support .thumbnail-item >> nth=0")  # select slot A·1
    wait_text(page, "#mn-slot", "class A")
    upload = page.locator('input[data-testid="Upload into slots-upload-button"]')
    for character, next_slot in [(examples[0], "class B"), (examples[1], "class A")]:
        upload.set_input_files(str(sorted(character.glob("*.png"))[0]))  # fills the slot, selects the next
        wait_text(page, "#mn-slot", next_slot)
    queries = [str(sorted(c.glob("*.png"))[1]) for c in examples[:2]]
    page.locator('input[data-testid="Upload queries-upload-button"]').set_input_files(queries)
    page.wait_for_function("() => document.querySelector('#mn-prediction').innerText.split('.png').length === 3")
    wait_idle(page, "#mn-prediction")
    table = text(page, "#mn-prediction")
    assert ".png\tA" in table and ".png\tB" in table, table
    (tmp_path / "notes.png").write_text("not an image")
    page.locator('input[data-testid="Upload queries-upload-button"]').set_input_files(str(tmp_path / "notes.png"))
    wait_text(page, "#mn-status", "not an image")
    wait_idle(page, "#mn-prediction")
    assert text(page, "#mn-prediction") == table  # nothing else changed
    assert not outside


def test_random_episode_with_fce_and_screenshot(browser_page):
    page, outside = browser_page
    page.locator("#mn-k input[type=number]").fill("2")
    page.locator("#mn-k input[type=number]").press("Enter")
    page.locator("#mn-n input[type=number]").fill("5")
    page.locator("#mn-n input[type=number]").press("Enter")
    wait_text(page, "#mn-slot", "of 2")
    page.click("#mn-random")
    wait_text(page, "#mn-status", "random episode")
    page.check("#mn-compare input")
    wait_text(page, "#mn-prediction", "Matching Net + FCE")
    wait_text(page, "#mn-attention", "→")  # captions show the attention without → with FCE
    wait_idle(page, "body")
    page.wait_for_function("() => Array.from(document.images).every((i) => i.complete)")
    assert page.locator(".toast-body.error").count() == 0
    for close in page.locator(".toast-close").all():  # the previous test's warning: not for the picture
        close.click()
    page.wait_for_function("() => document.querySelectorAll('.toast-body').length === 0")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 50_000
    assert not outside, f"the page fetched from outside: {outside}"
