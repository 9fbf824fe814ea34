"""The progress bar of the generating commands: rich on stderr, fed by the pipeline's per-step callback."""

from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from diffx.cli.core import ERR

if TYPE_CHECKING:
    from diffx.sampling.samplers import StepRecord


class RateColumn(ProgressColumn):
    """Model evaluations per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "- it/s", style="progress.data.speed")


class StepProgress:
    """A rich progress bar on stderr fed by the pipeline's per-step callback: one bar per run (a run
    starts when a step record with index 0 arrives), showing step i/N, the timestep, it/s and ETA. The bar
    appears with the first step, so an error before it (a bad value) prints alone, with no blank line."""

    def __init__(self, runs: int = 1):
        self.runs, self.run, self.task = runs, 0, None
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("t={task.fields[t]}"), RateColumn(), TimeRemainingColumn(), console=ERR)

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.run:
            self.bar.stop()

    def __call__(self, record: "StepRecord") -> None:
        if record.index == 0:
            self.bar.start()  # the first run's first step shows the bar; later starts do nothing
            self.run += 1
            label = f"run {self.run}/{self.runs}" if self.runs > 1 else "denoising"
            self.task = self.bar.add_task(label, total=record.num_steps, t="")
        self.bar.update(self.task, completed=record.index + 1, t=f"{record.timestep:g}")
