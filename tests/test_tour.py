"""`diffx tour` (#32): the README's tour in one command. Every stop's command runs into one folder, and an index page
shows each file with its caption and the command that made it. The captions live in one place (diffx/tour/stops.py);
the README's tour and the notebook are checked against it word for word, so they cannot drift."""

import html
import re
import shlex
import time
from pathlib import Path

import nbformat
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.tour import STOPS, InTour, Stop, TourRun, render_index, tour_files
from diffx.tour.page import inline_markdown
from diffx.tour.stops import shell_quote

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NOTEBOOK = ROOT / "examples" / "tour.ipynb"


def normalised(text: str) -> str:
    """Whitespace as one space: the README wraps its paragraphs, the stops' strings do not."""
    return " ".join(text.split())


def readme_tour() -> str:
    return normalised(README[README.index("## A guided tour"):README.index("## The Python API")])


def refused(result, *fragments: str) -> None:
    """Exit code 2 with exactly one `error: …` line on stderr (at most 300 characters) holding every fragment."""
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) <= 300, result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_every_caption_is_the_readmes_word_for_word():
    tour = readme_tour()
    for stop in STOPS:
        assert f"**{stop.title}" in tour, stop.name
        for paragraph in stop.caption:
            assert normalised(paragraph) in tour, f"{stop.name}: {paragraph[:80]}…"


# Screenshots of the live page (`diffx studio`), which no command writes: tests/studio/test_browser.py drives it.
STUDIO_SCREENSHOTS = {"studio.png", "studio_running.png"}


def test_every_readme_picture_is_made_by_the_tour_with_the_readmes_label():
    shown = [(label, name) for label, name in re.findall(r"!\[([^\]]*)\]\(docs/images/([^)]+)\)", README)
             if name not in STUDIO_SCREENSHOTS]
    labels = {file.name: file.label for stop in STOPS for file in stop.files}
    assert len(shown) >= 15
    for label, name in shown:
        assert labels.get(name) == label, name


def test_the_notebook_opens_each_concept_with_the_same_words():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    markdown = normalised(" ".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown"))
    concepts = [stop for stop in STOPS if stop.concept]
    assert len(concepts) >= 8
    for stop in concepts:
        assert stop.caption[0].startswith(stop.concept), stop.name
        assert normalised(stop.concept) in markdown, stop.name


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_stop_command_parses_and_reads_back_from_the_page(quick, tmp_path):
    """Each command line is one the app accepts (unknown options fail here, not minutes into a tour), and the line
    the page shows is the same arguments, quoted for a shell."""
    group = typer.main.get_command(app)
    for stop in STOPS:
        if not stop.args:
            assert stop.made_by in {other.name for other in STOPS if other.args}, stop.name
            continue
        command = group.commands[stop.args[0]]
        command.make_context(f"diffx {stop.args[0]}", stop.argv(tmp_path, quick)[1:])
        assert shlex.split(stop.command_line(quick)) == ["diffx", *stop.arguments(quick)]


def test_quick_values_replace_the_full_ones_or_join_them():
    stop = Stop("s", "S", ("caption",), (), ("trace", "--steps", "25", "--gif", InTour("t.gif")),
                quick=(("--steps", "3"), ("--seed", "1")))
    assert stop.arguments() == ("trace", "--steps", "25", "--gif", "t.gif")
    assert stop.arguments(quick=True) == ("trace", "--steps", "3", "--gif", "t.gif", "--seed", "1")
    assert stop.argv(Path("out"), quick=True)[4] == str(Path("out") / "t.gif")
    assert stop.command_line(extra=("--device", "cpu")) == "diffx trace --steps 25 --gif t.gif --device cpu"
    assert [shell_quote(arg) for arg in ("a red circle", "5,10", "$HOME", "it's", "it's $5")] == [
        '"a red circle"', "5,10", "'$HOME'", '"it\'s"', "'it'\\''s $5'"]
    assert shlex.split(shell_quote("it's $5")) == ["it's $5"]


def test_the_page_says_what_differs_from_the_captions_and_needs_no_network():
    commands = {stop.name: stop.command_line(quick=True) for stop in STOPS if stop.args}
    run = TourRun(commands, dict.fromkeys(commands, 1.5), model="my-model.safetensors", device="cpu", quick=True,
                  embedded=False)
    page = render_index(run)
    assert "quick look" in page and "my-model.safetensors, so what you see may differ" in page
    assert "<code>t=0</code>" in page and "<cite>The embedded model</cite>" in page  # the README's markdown
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # every link is a file of the folder
    assert inline_markdown("`<out>_steps.png` & [x](#y)") == "<code>&lt;out&gt;_steps.png</code> &amp; <cite>x</cite>" \
                                                          " (a section of the README)"


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    return lambda *args: CliRunner().invoke(app, [str(arg) for arg in args])


def test_bad_input_is_refused_before_any_work(run, tmp_path):
    (tmp_path / "afile").write_text("")
    refused(run("tour", "afile"), "afile is a file", "folder")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "noise.png").write_text("mine")
    refused(run("tour", "old"), "noise.png", "already exist", "--force")
    refused(run("tour", "new", "--device", "tpu"), "device", "cpu")
    refused(run("tour", "new", "--model", "no/such/model"), "no/such/model")
    refused(run("tour", "new", "--dtype", "fp8"), "dtype")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile", "old"]
    assert [path.name for path in (tmp_path / "old").iterdir()] == ["noise.png"]


@pytest.fixture(scope="module")
def quick_tour(tmp_path_factory):
    """`diffx tour --quick` on the embedded model, once for the module: (folder, result, seconds)."""
    folder = tmp_path_factory.mktemp("tour") / "tour"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DIFFX_MODEL", raising=False)
        start = time.perf_counter()
        result = CliRunner().invoke(app, ["tour", str(folder), "--quick"])
    seconds = time.perf_counter() - start
    print(f"diffx tour --quick: {seconds:.1f} s")
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    return folder, result, seconds


def test_quick_tour_writes_every_file_and_the_page_shows_each_with_its_caption_and_command(quick_tour):
    folder, result, _ = quick_tour
    assert sorted(path.name for path in folder.iterdir()) == sorted(tour_files())  # nothing more, nothing less
    page = (folder / "index.html").read_text(encoding="utf-8")
    for stop in STOPS:
        for paragraph in stop.caption:
            assert inline_markdown(paragraph) in page, stop.name
        maker = next(other for other in STOPS if other.name == (stop.made_by or stop.name))
        assert html.escape(maker.command_line(quick=True)) in page, stop.name
        for file in stop.files:
            attribute = "src" if file.name.endswith((".png", ".gif")) else "href"
            assert f'{attribute}="{file.name}"' in page, file.name
            if attribute == "src":
                with Image.open(folder / file.name) as picture:
                    picture.verify()
    assert f"{len([stop for stop in STOPS if stop.args])} commands in" in page and "quick look" in page
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {folder / 'index.html'}")


def test_a_second_tour_into_the_folder_is_refused_until_forced(quick_tour, run):
    folder = quick_tour[0]
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    refused(run("tour", folder, "--quick"), "already exist", "--force")
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before


def test_the_tour_passes_each_embedding_on_with_its_absolute_path_and_token(tmp_path, monkeypatch):
    from diffx.cli.options import ModelChoice
    from diffx.cli.tour import model_options

    monkeypatch.chdir(tmp_path)
    for name in ("a.pt", "b.safetensors"):
        (tmp_path / name).write_bytes(b"")
    choice = ModelChoice(embedding=["a.pt", "b.safetensors:<b>"])
    folder = tmp_path.resolve()
    assert model_options(choice) == [("--embedding", f"{folder}/a.pt"), ("--embedding", f"{folder}/b.safetensors:<b>")]
