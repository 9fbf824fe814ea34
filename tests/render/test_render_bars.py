"""Horizontal bar charts (diffx.render.bars): every panel titled, its axis labelled, one bar per label in the
given order from the top, a legend of the groups, the figure titled; bad input refused."""

import numpy as np
import pytest

from diffx.errors import InvalidArgumentError
from diffx.render.bars import BarPanel, bars_figure, plot_bars

PANELS = [BarPanel("U-Net blocks", ["input block 0", "middle block", "output block 0"], [0.0, 2.0, 1.0],
                   ["input", "middle", "output"]),
          BarPanel("text-encoder layers", ["TE layer 0", "TE layer 1"], [0.5, 0.25], ["text encoder"] * 2)]


def test_the_chart_is_labelled_and_draws_each_bar_in_order():
    figure = bars_figure(PANELS, "LoRA a.safetensors at s = 1", "‖ΔW‖_F")
    first, second = figure.axes
    assert figure.get_suptitle() == "LoRA a.safetensors at s = 1"
    assert [ax.get_title() for ax in figure.axes] == ["U-Net blocks", "text-encoder layers"]
    assert all(ax.get_xlabel() == "‖ΔW‖_F" for ax in figure.axes)
    assert [tick.get_text() for tick in first.get_yticklabels()] == ["input block 0", "middle block", "output block 0"]
    assert first.get_ylim()[0] > first.get_ylim()[1]  # y inverted: the first label at the top
    assert [bar.get_width() for bar in first.patches] == [0.0, 2.0, 1.0]
    assert [text.get_text() for text in first.get_legend().get_texts()] == ["input", "middle", "output"]
    assert [text.get_text() for text in second.get_legend().get_texts()] == ["text encoder"]
    colours = {tuple(bar.get_facecolor()) for ax in figure.axes for bar in ax.patches}
    assert len(colours) == 4  # a colour per group


def test_plot_bars_draws_a_picture_that_grows_with_the_bars():
    small = plot_bars(PANELS[1:], "t", "x")
    large = plot_bars(PANELS, "t", "x")
    assert small.mode == "RGB" and large.size[0] == small.size[0] and large.size[1] > small.size[1]
    assert len(np.unique(np.asarray(large).reshape(-1, 3), axis=0)) > 10


@pytest.mark.parametrize("panels", [[], [BarPanel("p", ["a"], [1.0, 2.0], ["g"])],
                                    [BarPanel("p", ["a"], [float("nan")], ["g"])]])
def test_bad_bars_are_refused(panels):
    with pytest.raises(InvalidArgumentError):
        bars_figure(panels, "t", "x")
