"""Regenerate docs/demo.png: the app on a fixed random 5-way 2-shot Omniglot episode, FCE comparison on, as
headless Chromium (Playwright) shows it. An explicit command; the tests run the same steps into a tmp folder.

    python -m demo.screenshot [--out docs/demo.png] [--chromium /usr/bin/chromium]
"""
from __future__ import annotations

import argparse
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from .page import build_demo, launch

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT = 60_000  # ms; software rendering on a busy 2-core machine is slow, and every wait is a readiness check
SEED = 0  # the same random episodes every run: a reproducible picture


@contextlib.contextmanager
def served(seed: int | None = SEED, **kwargs) -> Iterator[str]:
    """The app on a free loopback port; yields its URL."""
    page = build_demo(seed=seed, **kwargs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(page, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()


@contextlib.contextmanager
def browser(url: str, chromium: str = CHROMIUM, outside: list[str] | None = None):
    """A Playwright page on url; every request to anywhere but the app goes into `outside`."""
    from playwright.sync_api import sync_playwright

    if not Path(chromium).exists():
        raise SystemExit(f"{chromium} missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT)
            if outside is not None:
                page.on("request", lambda r: outside.append(r.url)
                        if not r.url.startswith((url, "data:", "blob:")) else None)
            page.goto(url)
            yield page
        finally:
            b.close()


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([sel, text]) => { const e = document.querySelector(sel); "
                           "return e !== null && e.innerText.includes(text); }", arg=[selector, text])


def wait_idle(page, selector: str) -> None:
    """Until gradio's progress overlay (processing / queue) has left the element."""
    page.wait_for_function("(sel) => { const t = document.querySelector(sel).innerText; "
                           "return !t.includes('processing') && !t.includes('queue:'); }", arg=selector)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def stage(page) -> None:
    """The pictured state: a random 5-way 2-shot episode with its query, FCE comparison on."""
    wait_text(page, "#mn-status", "Copy one")  # loaded
    set_number(page, "mn-k", 2)
    set_number(page, "mn-n", 5)
    wait_text(page, "#mn-slot", "of 2")
    page.click("#mn-random")
    wait_text(page, "#mn-status", "random episode")
    if not page.locator("#mn-compare input").is_checked():
        page.check("#mn-compare input")
    wait_text(page, "#mn-prediction", "Matching Net + FCE")
    page.wait_for_selector("#mn-attention .mn-fce")  # the cards show both models' attention
    wait_idle(page, "body")
    page.wait_for_selector("#mn-heatmap .js-plotly-plot")
    page.wait_for_selector("#mn-embedding .js-plotly-plot")
    page.wait_for_function("() => Array.from(document.images).every((i) => i.complete)")
    for close in page.locator(".toast-close").all():  # an earlier warning: not for the picture
        close.click()
    page.wait_for_function("() => document.querySelectorAll('.toast-body').length === 0")


def shoot(page, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.png")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    outside: list[str] = []
    with served() as url, browser(url, args.chromium, outside) as page:
        stage(page)
        shoot(page, args.out)
    if outside:
        raise SystemExit(f"the page fetched from outside: {outside}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
