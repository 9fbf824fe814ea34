"""The HTML report, checked in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

The browser is never downloaded: if it is missing or does not start, the browser tests fail and say why.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.models.configs import sd15, tiny
from diffx.models.stable_diffusion import build
from diffx.pipeline.conditioning import PromptTruncatedWarning
from diffx.pipeline.settings import GenerationSettings
from diffx.render.colormap import NORMALIZE_SCALES, heatmap, normalize_maps
from diffx.render.latents import visualize_noise
from diffx.report import columns as report_columns
from diffx.report import sections as report_sections
from diffx.report.page import render_report_html, write_report
from diffx.sampling.schedules import NoiseSchedule
from diffx.trace.record import Trace, token_dict, tokens_from_dict
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.views.steps import latent_preview, xt_pictures

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "a red horse galloping on the beach at sunset, oil painting"
STEPS = 6


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny random-weight model, a guidance sweep of traces, the pages, the browser


@pytest.fixture(scope="session")
def model():
    torch.manual_seed(0)
    return build(tiny())


@pytest.fixture(scope="session")
def sweep(model) -> list[Trace]:
    """Traces of the same prompt and seed at guidance 1 and 7.5, x̂0 decoded at every step."""
    return [generate_traced(model, GenerationSettings(prompt=PROMPT, steps=STEPS, guidance=guidance),
                     decode_every=1).traces[0] for guidance in (1.0, 7.5)]


@pytest.fixture(scope="session")
def pages(sweep, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report")
    return {"single": write_report(sweep[1], folder / "single.html"),
            "sweep": write_report(sweep, folder / "sweep.html")}


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        pytest.fail(f"the report tests need Playwright's Python package ({error}); run pip install -e '.[test]'")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing; install Debian's browser with `apt-get install -y chromium` "
                    "(never `playwright install`: the tests use the system browser)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as error:  # Playwright raises its own Error types for a browser that won't start
            pytest.fail(f"{CHROMIUM} did not start under Playwright: {error}")
        yield chromium
        chromium.close()


class OpenPage:
    """A page opened from disk, with every request and every console error it produced."""

    def __init__(self, browser, path: Path, width: int = 1280, height: int = 800):
        self.url = path.resolve().as_uri()
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def _route(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if url == self.url or url.startswith("data:"):
            route.continue_()
        else:
            route.abort()

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if url != self.url and not url.startswith("data:")]

    def src(self, selector: str) -> str:
        return self.page.locator(selector).first.get_attribute("src")

    def text(self, selector: str) -> str:
        return self.page.locator(selector).first.inner_text()

    def press_outside_controls(self, key: str) -> None:
        self.page.evaluate("document.activeElement && document.activeElement.blur()")
        self.page.keyboard.press(key)


@pytest.fixture
def single(browser, pages):
    opened = OpenPage(browser, pages["single"])
    yield opened
    opened.context.close()


@pytest.fixture
def swept(browser, pages):
    opened = OpenPage(browser, pages["sweep"])
    yield opened
    opened.context.close()


def page_data(page: str) -> dict:
    """The JSON the page's script reads."""
    text = re.search(r'<script type="application/json" id="diffx-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(text.replace("<\\/", "</"))


def decode_data_uri(uri: str) -> np.ndarray:
    assert uri.startswith(("data:image/webp;base64,", "data:image/png;base64,"))
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def is_lossy(uri: str) -> bool:
    """Whether a data: URI holds lossy WebP (a "VP8 " chunk; lossless WebP is "VP8L", PNG is lossless)."""
    return uri.startswith("data:image/webp;") and base64.b64decode(uri.split(",", 1)[1])[12:16] == b"VP8 "


def synthetic_trace(base: Trace, steps: int, side: int, attention: torch.Tensor | None = None) -> Trace:
    """A trace with the prompt and tokens of `base` and random tensors with SD1.5's shapes at `side` px:
    latents (4, side/8, side/8), attention (K, side/8, side/8), x̂0 decoded at every step."""
    meta = {**copy.deepcopy(base.meta), "model": {"name": "sd15", "source": "synthetic", "config": sd15().to_dict()}}
    generator = torch.Generator().manual_seed(0)
    latent = side // 8
    timesteps = torch.linspace(981, 1, steps).round().long()
    alphas_cumprod = NoiseSchedule.create().alphas_cumprod[timesteps]

    def noise() -> torch.Tensor:
        return torch.randn(steps, 4, latent, latent, generator=generator).half()

    num_tokens = base.tokens.num_tokens
    tensors = {
        "timesteps": timesteps.float(), "alphas_cumprod": alphas_cumprod,
        "sigmas": ((1 - alphas_cumprod) / alphas_cumprod).sqrt(),
        "latents": noise(), "eps": noise(), "eps_cond": noise(), "eps_uncond": noise(), "x0": noise(),
        "attention": (torch.rand(steps, num_tokens, latent, latent, generator=generator).half()
                      if attention is None else attention),
        "decoded_x0": torch.randint(0, 256, (steps, side, side, 3), generator=generator, dtype=torch.uint8),
        "decoded_steps": torch.arange(steps),
        "image": torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8),
        "final_latent": torch.randn(4, latent, latent, generator=generator),
    }
    return replace(base, settings=replace(base.settings, height=side, width=side, steps=steps), meta=meta,
                   tensors=tensors)


# ---------------------------------------------------------------------------------------------
# The page without a browser: size, content, errors


def test_50_step_512px_trace_fits_in_12_mb(sweep):
    trace = synthetic_trace(sweep[0], steps=50, side=512)
    num_tokens = trace.tokens.num_tokens
    assert len(trace.words) >= 10 and trace.tensors["attention"].shape[-3:] == (num_tokens, 64, 64)
    size = len(render_report_html(trace).encode("utf-8"))
    print(f"synthetic 50-step 512 px trace, {len(trace.words)} words: {size / 1e6:.2f} MB of HTML")
    assert size <= 12_000_000  # 11.5 MB: lossless random 64×64 heatmaps are ~6 kB each, 1,200 of them


def test_page_is_self_contained_and_shows_the_run(sweep):
    page = render_report_html(sweep[1])
    # Nothing is fetched: no external URL in any src/href, and every picture is a data: URI.
    for attribute in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attribute.startswith("data:"), attribute
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "__DATA__" not in page and "__BODY__" not in page
    for text in (PROMPT, "ddim", "scaled_linear", "7.5", "tiny", "64×64", "gallo", "37350", "15 of 77 tokens"):
        assert text in page, text
    data = page_data(page)
    column = data["columns"][0]
    assert data["num_steps"] == STEPS and sorted(column["frames"]) == ["eps", "guide", "x0", "xt"]
    assert all(len(frames) == STEPS for frames in column["frames"].values())
    assert column["x0_decoded"] == [True] * STEPS
    assert data["default_words"] == [sweep[1].words.index("galloping")]
    # The step info prints the trace's own t, σ, ᾱ.
    tensors = sweep[1].tensors
    assert column["info"][2] == (f"t = {tensors['timesteps'][2]:.0f} · σ = {float(tensors['sigmas'][2]):.4g} · "
                                 f"ᾱ = {float(tensors['alphas_cumprod'][2]):.4g}")


@pytest.mark.parametrize("decode_every", [0, 1])
def test_the_page_shows_exactly_what_the_renderer_drew(model, decode_every):
    """Every panel whose colours are numbers — ε̂, ε_c − ε_u, the latent previews of x̂0 and x_t, the heatmaps on
    both scales — decodes to the very pixels `diffx.render` draws from the trace (lossy WebP scrambled their
    channels); only pictures at the image size (VAE decodes, x_t drawn over them, the final image) are lossy."""
    trace = generate_traced(model, GenerationSettings(prompt="a green circle above a red square", steps=3),
                            decode_every=decode_every).traces[0]
    tensors, steps = trace.tensors, range(trace.num_steps)
    column = page_data(render_report_html(trace))["columns"][0]
    expected = {"eps": [visualize_noise(tensors["eps"][s]) for s in steps],
                "guide": [visualize_noise(tensors["eps_cond"][s].float() - tensors["eps_uncond"][s].float())
                          for s in steps]}
    if not decode_every:
        expected["x0"] = [latent_preview(trace, "x0", s) for s in steps]
        expected["xt"] = xt_pictures(trace, list(steps), expected["x0"])
    for key, pictures in expected.items():
        for step, picture in enumerate(pictures):
            assert not is_lossy(column["frames"][key][step]), (key, step)
            np.testing.assert_array_equal(decode_data_uri(column["frames"][key][step]), picture,
                                          err_msg=f"{key}, step {step + 1}")
    for scale in NORMALIZE_SCALES:
        for step in steps:
            for word, values in enumerate(normalize_maps(trace.word_maps(step), scale)):
                np.testing.assert_array_equal(decode_data_uri(column["heat"][scale][word][step]),
                                              heatmap(values, 0.0, 1.0, cmap=report_columns.COLORMAP),
                                              err_msg=f"heatmap of word {word + 1}, {scale} scale, step {step + 1}")
    lossy = [is_lossy(uri) for uri in column["frames"]["x0"] + column["frames"]["xt"]]
    assert lossy == [bool(decode_every)] * 2 * len(steps) and is_lossy(column["image"])


def test_prompt_text_cannot_break_the_page(sweep):
    trace = synthetic_trace(sweep[0], steps=2, side=64)
    trace = replace(trace, settings=replace(trace.settings, prompt='a </script><b>__DATA__</b> "cat"'))
    page = render_report_html(trace)
    assert page.count("</script>") == 2  # the data and the code, nothing from the prompt
    assert "&lt;/script&gt;&lt;b&gt;__DATA__&lt;/b&gt;" in page
    assert page_data(page)["num_steps"] == 2


def test_heatmaps_follow_each_words_attention_and_the_colour_scale(sweep):
    """Word i attends to quadrant i % 4 only, with strength 10^-i: its heatmap must be brightest there;
    on the shared scale the weak words go dark, on the per-word scale every word is bright somewhere."""
    tokens = sweep[0].tokens
    attention = torch.zeros(3, tokens.num_tokens, 8, 8)
    for position, word in enumerate(tokens.word_ids):
        if word is not None:
            row, col = divmod(word % 4, 2)
            attention[:, position, row * 4:row * 4 + 4, col * 4:col * 4 + 4] = 10.0 ** -word
    data = page_data(render_report_html(synthetic_trace(sweep[0], steps=3, side=64, attention=attention.half())))
    heat = data["columns"][0]["heat"]
    for word in range(4):
        for scale in ("word", "shared"):
            brightness = decode_data_uri(heat[scale][word][1]).astype(float).sum(-1)  # viridis: brighter = more
            quadrants = [brightness[r * 4:r * 4 + 4, c * 4:c * 4 + 4].mean() for r in (0, 1) for c in (0, 1)]
            if scale == "word" or word == 0:
                assert int(np.argmax(quadrants)) == word % 4, (scale, word, quadrants)
    darkest = decode_data_uri(heat["shared"][3][1]).astype(float).sum(-1).max()
    assert darkest < 0.5 * decode_data_uri(heat["word"][3][1]).astype(float).sum(-1).max()


def test_the_page_draws_x0_as_every_view_does(model):
    """One rule for x̂0 (`resolve_preview`): "auto" decodes when the trace holds every decode or the model's
    decoder is cheap (the tiny model's is), else every step gets the latent preview — never a mix; "vae"
    without a model names the steps the trace did not decode."""
    trace = generate_traced(model, GenerationSettings(prompt="a blue square", steps=5), decode_every=3).traces[0]

    def column(**options) -> dict:
        return page_data(render_report_html(trace, **options))["columns"][0]

    assert sorted(trace.decoded_steps()) == [0, 3, 4]
    alone, decoded, fast = column(), column(model=model), column(model=model, preview="fast")
    assert alone["x0_decoded"] == [False] * 5 and alone["x0_label"] == "x̂0 (latent preview)"
    assert decoded["x0_decoded"] == [True] * 5 and decoded["x0_label"] == "x̂0 (VAE decode)"
    assert fast["x0_decoded"] == [False] * 5 and fast["frames"]["x0"] == alone["frames"]["x0"]
    with pytest.raises(InvalidArgumentError, match="no VAE decode of x̂0 at step 2, 3; pass --model"):
        render_report_html(trace, preview="vae")


def test_the_tokens_card_names_the_models_pad_token(model):
    """The padding row and the window's tooltips say what the model pads with ("!" for SD 2.x and SDXL's bigG,
    the end token for SD1.x); a trace written before the field existed shows the end token."""
    model.tokenizer = model.tokenizer.padded_with("!")
    try:
        trace = generate_traced(model, GenerationSettings(prompt="a blue square", steps=1)).traces[0]
    finally:
        model.tokenizer = model.tokenizer.padded_with("<|endoftext|>")
    section = report_sections.tokens_section(trace)
    assert trace.tokens.tokens[-1] == "!" and "! × 72" in section and "padding ! (0)" in section
    written = {key: value for key, value in token_dict(trace.tokens).items() if key not in ("pad_token", "pad_id")}
    older = replace(trace, tokens=tokens_from_dict(written, trace.settings.prompt))
    assert "&lt;|endoftext|&gt; × 72" in report_sections.tokens_section(older)


def test_truncated_prompt_shows_what_was_cut(model):
    prompt = " ".join(["a tiny red house"] * 25) + " with a purple dragon"
    with pytest.warns(PromptTruncatedWarning):
        trace = generate_traced(model, GenerationSettings(prompt=prompt, steps=1)).traces[0]
    page = render_report_html(trace)
    assert "77 of 77 tokens" in page and "purple dragon" in page and "Cut off by the 77-token window" in page
    dragon = trace.words.index("dragon")
    assert re.search(rf'class="word cut" data-word="{dragon}"', page)


def test_write_report_errors(sweep, tmp_path):
    path = write_report(sweep[0], tmp_path / "report.html")
    with pytest.raises(OutputPathError, match="--force"):
        write_report(sweep[0], path)
    assert write_report(sweep[0], path, force=True) == path
    with pytest.raises(InvalidArgumentError, match="no traces"):
        write_report([], tmp_path / "empty.html")
    short = synthetic_trace(sweep[0], steps=3, side=64)
    with pytest.raises(InvalidArgumentError, match="different numbers of steps"):
        render_report_html([sweep[0], short])


def test_traces_of_two_models_show_each_columns_model(model):
    """Each column names its model; the given model decodes only its own traces, the other column says so."""
    torch.manual_seed(1)
    other = build(tiny())
    run = GenerationSettings(prompt="a blue square", steps=3)
    mine, theirs = (generate_traced(m, run).traces[0] for m in (model, other))
    page = render_report_html([mine, theirs], model=model)
    columns = page_data(page)["columns"]
    hashes = [t.meta["model"]["identity"]["weights_hash"] for t in (mine, theirs)]
    assert hashes[0] != hashes[1]
    assert [column["label"] for column in columns] == [f"model tiny ({h[:8]})" for h in hashes]
    for column, weights in zip(columns, hashes, strict=True):
        assert weights in column["model"]
        assert f"model: {html.escape(column['model'])}" in page
    assert "models" in page and " / ".join(column["model"] for column in columns) in html.unescape(page)
    assert columns[0]["x0_decoded"] == [True] * 3 and columns[0]["decode_note"] is None
    assert columns[1]["x0_decoded"] == [False] * 3
    assert "not decoded with the given model: the trace was made by model tiny" in columns[1]["decode_note"]
    assert html.escape(columns[1]["decode_note"]) in page
    # One model: no model line per column, labels as before.
    single = render_report_html([mine, generate_traced(model, GenerationSettings(prompt="a blue square", steps=3,
                                                                                  guidance=2.0)).traces[0]])
    assert "column-model" not in single and page_data(single)["columns"][0]["label"].startswith("guidance")


# ---------------------------------------------------------------------------------------------
# The page in Chromium


def test_opens_from_disk_without_errors_or_network(single):
    assert single.errors == []
    assert single.foreign_requests() == []
    assert single.url in single.requests
    images = single.page.locator("img")
    assert images.count() >= 7
    for index in range(images.count()):
        image = images.nth(index)
        assert image.get_attribute("src").startswith(("data:image/webp;base64,", "data:image/png;base64,"))
        assert image.get_attribute("alt")
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    for control in ("#first", "#prev", "#play", "#next", "#last", "#step", "#fps", "#opacity"):
        assert single.page.locator(control).get_attribute("aria-label"), control


def test_slider_buttons_and_arrow_keys_move_the_step(single):
    assert single.text("#step-label") == f"step 1 / {STEPS}"
    x0_first, info_first = single.src('img[data-panel="x0"]'), single.text(".step-info")
    xt_first = single.src('img[data-panel="xt"]')
    single.page.locator("#step").fill("4")
    assert single.text("#step-label") == f"step 4 / {STEPS}"
    assert single.src('img[data-panel="x0"]') != x0_first and single.src('img[data-panel="xt"]') != xt_first
    assert single.text(".step-info") != info_first and single.text(".step-info").startswith("t = ")
    assert "step 4 of 6" in single.page.locator('img[data-panel="eps"]').get_attribute("alt")
    x0_step4 = single.src('img[data-panel="x0"]')
    single.press_outside_controls("ArrowRight")
    assert single.text("#step-label") == f"step 5 / {STEPS}"
    assert single.src('img[data-panel="x0"]') != x0_step4
    single.press_outside_controls("ArrowLeft")
    assert single.text("#step-label") == f"step 4 / {STEPS}" and single.src('img[data-panel="x0"]') == x0_step4
    single.press_outside_controls("End")
    assert single.page.locator("#step").input_value() == str(STEPS)
    single.page.click("#first")
    assert single.text("#step-label") == f"step 1 / {STEPS}" and single.src('img[data-panel="x0"]') == x0_first
    single.page.click("#next")
    assert single.text("#step-label") == f"step 2 / {STEPS}"
    # Play runs to the last step, then stops.
    single.page.select_option("#fps", "10")
    single.page.click("#play")
    single.page.wait_for_function(f"document.getElementById('step-label').textContent === 'step {STEPS} / {STEPS}'",
                                  timeout=5000)
    single.page.wait_for_function("!document.getElementById('play').classList.contains('playing')", timeout=2000)
    assert single.errors == []


def test_clicking_words_and_the_colour_scale_change_the_heatmap(single, sweep):
    words = sweep[1].words
    heat = 'img.heat[data-col="0"]'
    galloping = single.src(heat)
    assert single.page.locator(f'button.word[data-word="{words.index("galloping")}"]').get_attribute(
        "aria-pressed") == "true"
    single.page.click(f'button.word[data-word="{words.index("horse")}"]')
    assert single.src(heat) != galloping
    assert single.page.locator(heat).count() == 1 and "horse" in single.text(".attention figcaption")
    assert single.page.locator(f'button.word[data-word="{words.index("horse")}"]').get_attribute(
        "aria-pressed") == "true"
    assert single.page.locator(f'button.word[data-word="{words.index("galloping")}"]').get_attribute(
        "aria-pressed") == "false"
    horse_word_scale = single.src(heat)
    single.page.click('label[for="scale-shared"]')
    assert single.page.locator("#scale-shared").is_checked()
    assert single.src(heat) != horse_word_scale and "shared" in single.page.locator(heat).get_attribute("alt")
    single.page.click('label[for="scale-word"]')
    assert single.src(heat) == horse_word_scale
    # Shift-click adds a word: two heatmaps; the heatmaps follow the slider too.
    single.page.click(f'button.word[data-word="{words.index("beach")}"]', modifiers=["Shift"])
    assert single.page.locator(heat).count() == 2
    single.page.locator("#step").fill("3")
    assert single.src(heat) != horse_word_scale
    assert single.errors == []


def test_the_layer_and_head_menus_switch_the_heatmaps(browser, model, tmp_path, monkeypatch):
    """A trace with per-head maps: the layer menu lists the aggregate and every layer, the head menu the
    heads; picking one shows exactly that layer's (head's) frame for the word and step; the mass table is there."""
    trace = generate_traced(model, GenerationSettings(prompt="a green circle", steps=2, height=32, width=32),
                            options=TraceOptions(record=("latents", "x0", "attention"),
                                                 attention_detail="heads")).traces[0]
    path = write_report(trace, tmp_path / "layers.html")
    data = page_data(path.read_text())["columns"][0]
    assert [layer["label"] for layer in data["layers"]] == ["down.0 16×16", "down.1 8×8", "mid 8×8", "up.0 8×8",
                                                           "up.1 8×8", "up.2 16×16", "up.3 16×16"]
    heads = len(data["layers"][0]["heads"])
    assert heads == model.config.unet.num_heads and len(data["layers"][3]["heads"][1][2]) == 2  # head, word, step
    print(f"page with per-head maps (tiny model, 2 steps, 3 words): {path.stat().st_size / 1e3:.0f} kB")
    opened = OpenPage(browser, path)
    try:
        heat = 'img.heat[data-col="0"]'
        word = int(opened.page.locator("button.word[aria-pressed='true']").get_attribute("data-word"))
        assert opened.src(heat) == data["heat"]["word"][word][0]
        assert opened.page.locator("#layer option").count() == 1 + 7
        assert opened.page.locator("#head option").count() == 1 + heads
        opened.page.select_option("#layer", "3")
        assert opened.src(heat) == data["layers"][3]["heat"][word][0]
        assert "layer up.0 8×8, mean of heads" in opened.text(".attention figcaption")
        opened.page.select_option("#head", "1")
        assert opened.src(heat) == data["layers"][3]["heads"][1][word][0]
        opened.press_outside_controls("ArrowRight")
        assert opened.src(heat) == data["layers"][3]["heads"][1][word][1]
        assert "head 2" in opened.page.locator(heat).get_attribute("alt")
        opened.page.select_option("#layer", "-1")
        assert opened.src(heat) == data["heat"]["word"][word][1]
        assert opened.page.locator("#mass-title").count() == 1
        assert opened.page.locator("section[aria-labelledby='mass-title'] tbody tr").count() == 1 + 7
        assert opened.errors == []
    finally:
        opened.context.close()
    monkeypatch.setattr(report_columns, "HEAD_FRAMES_MAX", 10)  # a big trace: the heads stay out of the page
    monkeypatch.setattr(report_sections, "HEAD_FRAMES_MAX", 10)
    page = render_report_html(trace)
    assert 'id="layer"' in page and 'id="head"' not in page and "per-head maps left out of this page" in page
    assert page_data(page)["columns"][0]["layers"][0]["heads"] is None


@pytest.mark.parametrize(("record", "missing_panels"), [(("latents",), 3), (("attention",), 4)])
def test_a_trace_with_few_recordings_still_works(browser, model, tmp_path, record, missing_panels):
    trace = generate_traced(model, GenerationSettings(prompt="a green circle", steps=2),
                            options=TraceOptions(record=record)).traces[0]
    opened = OpenPage(browser, write_report(trace, tmp_path / "few.html"))
    try:
        assert opened.errors == [] and opened.foreign_requests() == []
        assert opened.page.locator(".missing").count() == missing_panels
        assert opened.page.locator("img.heat").count() == ("attention" in record)
        opened.press_outside_controls("ArrowRight")
        assert opened.text("#step-label") == "step 2 / 2"
    finally:
        opened.context.close()


def test_sweep_columns_follow_one_slider(swept):
    assert swept.errors == [] and swept.foreign_requests() == []
    labels = swept.page.locator(".column h3").all_inner_texts()
    assert labels == ["guidance 1", "guidance 7.5"]
    columns = (0, 1)

    def state() -> list[tuple]:
        return [(swept.src(f'img[data-col="{c}"][data-panel="x0"]'), swept.src(f'img.heat[data-col="{c}"]'),
                 swept.text(f'.step-info[data-col="{c}"]'),
                 swept.page.locator(f'circle[data-marker-col="{c}"][data-chart="abar"]').get_attribute("cx"))
                for c in columns]

    assert "only ε_c is computed" in swept.text('.column:first-child .missing')
    before = state()
    assert before[0][0] != before[1][0]  # different guidance, different x̂0
    swept.page.locator("#step").fill("5")
    after = state()
    for c in columns:
        assert all(old != new for old, new in zip(before[c], after[c], strict=True)), (c, before[c], after[c])
    # Both columns show the same step of the same schedule.
    assert after[0][2:] == after[1][2:]


@pytest.mark.parametrize("width", [1280, 420])
def test_screenshots_are_not_blank(browser, pages, tmp_path, width):
    for name in ("single", "sweep"):
        opened = OpenPage(browser, pages[name], width=width, height=800)
        try:
            # A narrow window wraps instead of scrolling sideways.
            assert opened.page.evaluate("document.documentElement.scrollWidth") <= width
            opened.page.locator("#step").fill("3")
            path = tmp_path / f"{name}-{width}.png"
            opened.page.screenshot(path=str(path))
            assert opened.errors == []
        finally:
            opened.context.close()
        picture = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
        assert picture.shape == (800, width, 3)
        colours = np.unique((picture[..., 0] << 16) | (picture[..., 1] << 8) | picture[..., 2])
        assert picture.std() > 20 and len(colours) > 500
