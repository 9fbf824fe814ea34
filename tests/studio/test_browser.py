"""diffx studio in a real headless Chromium (Debian's, driven by Playwright) against a real uvicorn server on the
loopback: type a prompt, Run, all 25 steps arrive and the result is `diffx denoise`'s PNG pixel for pixel; the
slider scrubs; a word shows its attention; compare mode; an edit; a bad value's message; a foreign Origin and a
missing token are refused."""

import base64
import io
import shlex
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app as cli
from diffx.studio import create_app
from diffx.weights import load_model

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PROMPT = "a yellow heart above a blue circle"


@pytest.fixture(scope="module")
def server():
    """The studio for the embedded model on a free loopback port, in a thread; its base URL and token."""
    model = load_model(None)
    studio = uvicorn.Server(uvicorn.Config(create_app(model, token="t0ken"), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=studio.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not studio.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = studio.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    studio.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "install Debian's browser: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page(viewport={"width": 1300, "height": 1400})
        errors = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(f"{server}/?token=t0ken")
        tab.wait_for_selector("#sampler option", state="attached")
        yield tab
        browser.close()
        assert not errors, errors


def _wait_done(page, columns=1):
    """Every column's result shown, and the first column done (its downloads offered): on the embedded model that is
    after its steps were re-decoded by the VAE ("refine" events)."""
    page.wait_for_function(f"document.querySelectorAll('figure.result img').length >= {columns}", timeout=50_000)
    page.wait_for_function("document.querySelectorAll('#downloads a').length > 0", timeout=50_000)


def _pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_run_streams_every_step_and_ends_on_denoise_s_png(page, tmp_path):
    page.fill("#prompt", PROMPT)
    page.fill("#seed", "3")
    page.click("#run")
    _wait_done(page)
    assert "25 / 25 (25 arrived)" in page.inner_text("#step-label")
    result = _pixels(page.get_attribute("figure.result img", "src"))
    out = tmp_path / "denoise.png"
    shown = shlex.split(page.inner_text("#command"))
    assert shown[:3] == ["diffx", "trace", "--prompt"]
    # The thread count the page's command names (the studio gives one core to drawing): the same float sums.
    threads = shown[shown.index("--threads"):shown.index("--threads") + 2] if "--threads" in shown else []
    ran = CliRunner().invoke(cli, ["denoise", "--prompt", PROMPT, "--seed", "3", *threads, "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    assert np.array_equal(result, np.asarray(Image.open(out).convert("RGB")))  # same seed → same pixels
    assert page.locator("#downloads a").count() == 3


def test_the_slider_scrubs_back_and_a_word_shows_its_attention(page):
    last = page.inner_text(".step-info")
    page.locator("#step").fill("1")
    first = page.inner_text(".step-info")
    assert first != last and "t = 999" in first, (first, last)
    page.locator("button.word", has_text="heart").click()
    assert page.get_attribute("button.word >> text=heart", "aria-pressed") == "true"
    assert page.locator(".frame img.heat").count() == 1
    assert "attention of “heart”" in page.inner_text(".panels")


def test_compare_runs_a_second_column_with_one_setting_changed(page):
    page.select_option("#compare-key", "guidance")
    page.fill("#compare-value", "1")
    page.click("#run")
    _wait_done(page, columns=2)
    titles = page.locator(".column h3").all_inner_texts()
    assert titles == ["run A", "run B: guidance = 1"]
    page.select_option("#compare-key", "")


def test_an_edit_shows_source_plain_and_injected(page):
    page.fill("#edit-to", "a yellow star above a blue circle")
    page.click("#edit-run")
    page.wait_for_selector("#edit-result figure >> nth=2", timeout=50_000)
    captions = page.locator("#edit-result figcaption").all_inner_texts()
    assert captions[0] == "source prompt" and captions[1] == "edited prompt alone" and "injected" in captions[2]


def test_a_bad_value_shows_its_message(page):
    page.fill("#prompt", "   ")  # the form lets it through; the API's check (the CLI's) refuses it
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "the prompt is only spaces" in page.inner_text("#error")
    page.fill("#prompt", PROMPT)


def test_foreign_origins_and_missing_tokens_are_refused(page, server):
    foreign = page.request.post(f"{server}/api/runs", headers={"origin": "http://evil.example"},
                                data={"client": "x", "settings": {}})
    assert foreign.status == 403
    context = page.context.browser.new_context()  # no cookie: a program that never saw the URL
    try:
        assert context.request.get(f"{server}/").status == 403
        assert context.request.get(f"{server}/api/info").status == 403
    finally:
        context.close()
