"""examples/tour.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel) on the embedded model,
so it cannot rot, and what it shows is what diffx.notebook promises: pictures inline, the trace as the report
page in an iframe, the progress bar. The notebook is committed without outputs."""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TOUR = Path(__file__).resolve().parents[1] / "examples" / "tour.ipynb"


def outputs(cell) -> dict[str, str]:
    """mime type (or stream name) -> everything the cell showed of it."""
    shown: dict[str, str] = {}
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            shown[output["name"]] = shown.get(output["name"], "") + output["text"]
        for mime, data in output.get("data", {}).items():
            shown[mime] = shown.get(mime, "") + (data if isinstance(data, str) else "".join(data))
    return shown


def test_tour_is_committed_without_outputs():
    notebook = nbformat.read(TOUR, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_tour_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFX_MODEL", raising=False)  # the embedded model, as a learner would have it
    notebook = nbformat.read(TOUR, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # run in tmp_path
    print(f"tour.ipynb ran in {time.perf_counter() - start:.1f} s")
    for cell in notebook.cells:
        timing = cell.metadata.get("execution", {})
        if "iopub.execute_input" in timing:
            print(cell.source.splitlines()[0][:40], timing["iopub.execute_input"], timing["shell.execute_reply"])
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(output.get("name") == "stderr" and "Warning" in output["text"] for cell in code
                   for output in cell.outputs), "a warning in the tour"
    cells = {cell.source.splitlines()[0]: outputs(cell) for cell in code}

    def shown(start: str) -> dict[str, str]:
        """What the code cell whose first line is `start` (or, for `start…`, begins with it) showed."""
        (key,) = [line for line in cells if line.startswith(start[:-1]) if start.endswith("…") or line == start]
        return cells[key]

    generation = shown("picture = generate(…")
    assert "image/png" in generation and generation["text/plain"].startswith("Generation(")
    assert "denoising" in generation.get("stderr", "") + generation.get("application/vnd.jupyter.widget-view+json", "")
    for first_line in ("noise = …", "noise.schedule_plot", "traced = …", "sweep = …", "experiments.compare(…",
                       "print(trace.words…"):
        assert "image/png" in shown(first_line), first_line
    assert "astronaut" in shown("rich_print(…").get("text/plain", "") + shown("rich_print(…").get("text/html", "")
    report = shown("trace")
    assert report["text/html"].startswith("<iframe srcdoc=") and "&lt;script" in report["text/html"]
    assert "image/png" in report and report["text/plain"].startswith("Trace(")


if __name__ == "__main__":
    pytest.main([__file__, "-q", "-s"])
