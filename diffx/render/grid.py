"""Labelled layouts: grids of pictures with titles and axis labels, captioned frames, panel strips.

Text is drawn with DejaVu Sans, the TrueType font matplotlib ships, so labels are readable at any size
(Pillow's built-in bitmap font is tiny) and symbols like σ, ε̂ and x̂0 render. Font size scales with
the cell size; a label too long for its space is wrapped, then shrunk, then cut with "…".
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from diffx.render.image import PictureLike, to_pil

FONT_FAMILY = "DejaVu Sans"
MIN_FONT_SIZE = 8
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
TITLE_SCALE = 1.4  # the grid title is this much larger than the labels
AXIS_TITLE_SCALE = 1.2  # the axis titles, between the two


@functools.lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at `size` pixels, found through matplotlib's font manager."""
    path = font_manager.findfont(font_manager.FontProperties(family=FONT_FAMILY))
    return ImageFont.truetype(path, size)


def font_size_for(width: int, height: int) -> int:
    """A label font size in proportion to a cell: about 1/14 of its shorter side, within [11, 40]."""
    return max(11, min(40, round(min(width, height) / 14)))


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


@dataclass
class TextBlock:
    """Lines of text in one font, ready to be centred in a box."""

    lines: list[str]
    font: ImageFont.FreeTypeFont

    @property
    def height(self) -> int:
        return len(self.lines) * _line_height(self.font)

    @property
    def width(self) -> int:
        return round(max(self.font.getlength(line) for line in self.lines))

    def draw(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], fill=TEXT_COLOR) -> None:
        """Draw the lines centred horizontally and vertically in `box` = (left, top, right, bottom)."""
        left, top, right, bottom = box
        y = top + (bottom - top - self.height) / 2
        for line in self.lines:
            draw.text(
                (left + (right - left - self.font.getlength(line)) / 2, y), line, font=self.font, fill=fill
            )
            y += _line_height(self.font)


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """Greedy word wrap by pixel width; a single word wider than max_width stays on its own line."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _truncate(line: str, font: ImageFont.FreeTypeFont, max_width: float) -> str:
    while line and font.getlength(line + "…") > max_width:
        line = line[:-1]
    return line + "…"


def fit_text(
    text: str, max_width: float, font_size: int, max_lines: int = 2, min_font_size: int = MIN_FONT_SIZE
) -> TextBlock:
    """Lay out `text` within `max_width` pixels: wrap to at most `max_lines`, shrinking the font
    (down to `min_font_size`) while it does not fit; at the smallest size, cut with "…"."""
    size = font_size
    while True:
        font = load_font(size)
        lines = _wrap(text, font, max_width)
        if len(lines) <= max_lines and all(font.getlength(line) <= max_width for line in lines):
            return TextBlock(lines, font)
        if size <= min_font_size:
            kept = lines[:max_lines]
            if len(lines) > max_lines:
                kept[-1] = _truncate(kept[-1], font, max_width)
            kept = [
                _truncate(line, font, max_width) if font.getlength(line) > max_width else line
                for line in kept
            ]
            return TextBlock(kept, font)
        size = max(min_font_size, int(size * 0.85))


def balanced_columns(count: int, most: int, least: int = 1) -> int:
    """How many columns (`least` to `most`) to wrap `count` panels into: first a width whose last row is not a
    lone panel under fuller rows, where one exists; then the fewest rows; then the fewest empty cells; then the
    narrowest. 7 panels, 4 to 6 a row: 4 + 3 (not 6 + 1); 12: 6 + 6; 13: 5 + 5 + 3."""
    least = max(1, least)

    def cost(columns: int) -> tuple[bool, int, int]:
        rows = -(-count // columns)  # ceil
        return rows > 1 and count - (rows - 1) * columns == 1, rows, rows * columns - count

    return min(range(least, max(least, most) + 1), key=cost)


def _check_count(name: str, labels: Sequence | None, expected: int) -> None:
    if labels is not None and len(labels) != expected:
        raise ValueError(f"{name} has {len(labels)} entries for {expected} {name.split('_')[0]}s")


def make_grid(
    cells: Sequence[Sequence[PictureLike | None]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
    x_axis_title: str | None = None,
    y_axis_title: str | None = None,
    cell_size: tuple[int, int] | None = None,
    pad: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Arrange pictures in rows and columns with labels, e.g. seeds x guidance scales.

    Layout, top to bottom: title, x-axis title, column labels, then each row of cells with its
    label on the left (and `cell_labels` under each cell); the y-axis title runs vertically on the
    far left. Cells are resized to `cell_size` = (width, height) (default: the largest cell); a None
    cell (or a short row) is left blank. `font_size` defaults to `font_size_for(cell_size)`.
    """
    n_rows, n_cols = len(cells), max((len(row) for row in cells), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("make_grid needs at least one cell")
    _check_count("row_labels", row_labels, n_rows)
    _check_count("col_labels", col_labels, n_cols)
    _check_count("cell_labels", cell_labels, n_rows)
    pictures = [[None if cell is None else to_pil(cell) for cell in row] for row in cells]
    if cell_size is None:
        sizes = [picture.size for row in pictures for picture in row if picture is not None]
        cell_size = (max(w for w, _ in sizes), max(h for _, h in sizes))
    cell_w, cell_h = cell_size
    font_size = font_size or font_size_for(cell_w, cell_h)
    pad = max(2, font_size // 3) if pad is None else pad
    axis_title_size = round(font_size * AXIS_TITLE_SCALE)
    body_w = n_cols * cell_w + (n_cols - 1) * pad  # the cells, without labels

    # Measure every text block first: the band sizes decide where the cells go.
    col_blocks = [fit_text(label, cell_w, font_size) for label in col_labels] if col_labels else []
    row_blocks = []
    if row_labels:
        # Measured line by line: a label may hold "\n", which the font's layout cannot measure.
        natural_width = max(load_font(font_size).getlength(line) for label in row_labels for line in label.split("\n"))
        row_label_w = round(min(natural_width, max(cell_w, 4 * font_size)))
        row_blocks = [fit_text(label, row_label_w, font_size, max_lines=3) for label in row_labels]
    cell_blocks = [[fit_text(label, cell_w, font_size) for label in row] for row in (cell_labels or [])]
    x_axis_block = fit_text(x_axis_title, body_w, axis_title_size, max_lines=1) if x_axis_title else None
    title_block = fit_text(title, body_w, round(font_size * TITLE_SCALE)) if title else None

    def band(height: int) -> int:  # a text band plus the gap below it; 0 when there is no text
        return height + pad if height else 0

    title_h = band(title_block.height if title_block else 0)
    x_axis_h = band(x_axis_block.height if x_axis_block else 0)
    col_h = band(max((block.height for block in col_blocks), default=0))
    cell_label_h = band(max((block.height for row in cell_blocks for block in row), default=0))
    row_label_w = band(max((block.width for block in row_blocks), default=0))
    body_h = n_rows * (cell_h + cell_label_h) + (n_rows - 1) * pad
    y_axis_block = fit_text(y_axis_title, body_h, axis_title_size, max_lines=1) if y_axis_title else None
    y_axis_w = band(y_axis_block.height if y_axis_block else 0)

    left = pad + y_axis_w + row_label_w
    top = pad + title_h + x_axis_h + col_h
    canvas = Image.new("RGB", (left + body_w + pad, top + body_h + pad), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    if title_block:
        title_block.draw(draw, (left, pad, left + body_w, pad + title_block.height))
    if x_axis_block:
        y0 = pad + title_h
        x_axis_block.draw(draw, (left, y0, left + body_w, y0 + x_axis_block.height))
    if y_axis_block:
        strip = Image.new("RGB", (body_h, y_axis_block.height), BACKGROUND)
        y_axis_block.draw(ImageDraw.Draw(strip), (0, 0, body_h, y_axis_block.height))
        canvas.paste(strip.rotate(90, expand=True), (pad, top))  # reads bottom to top, like matplotlib
    for col, block in enumerate(col_blocks):
        x0 = left + col * (cell_w + pad)
        block.draw(draw, (x0, top - col_h, x0 + cell_w, top - pad))
    for row in range(n_rows):
        y0 = top + row * (cell_h + cell_label_h + pad)
        if row_blocks:
            row_blocks[row].draw(draw, (left - row_label_w, y0, left - pad, y0 + cell_h))
        for col, picture in enumerate(pictures[row]):
            x0 = left + col * (cell_w + pad)
            if picture is not None:
                canvas.paste(picture if picture.size == cell_size else picture.resize(cell_size), (x0, y0))
            if cell_blocks and col < len(cell_blocks[row]):
                cell_blocks[row][col].draw(draw, (x0, y0 + cell_h, x0 + cell_w, y0 + cell_h + cell_label_h))
    return canvas


def stack_pictures(pictures: Sequence[PictureLike], centred: bool = True) -> Image.Image:
    """Pictures one under the other on white, centred (or on the left edge, so rows that start alike line up)."""
    images = [to_pil(picture) for picture in pictures]
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), BACKGROUND)
    top = 0
    for image in images:
        canvas.paste(image, ((canvas.width - image.width) // 2 if centred else 0, top))
        top += image.height
    return canvas


def caption_bar(image: PictureLike, text: str, font_size: int | None = None) -> Image.Image:
    """Add a one-line caption under a frame, e.g. "step 12/25 · t=521 · σ=1.83".

    The bar height depends only on the image size and `font_size` (default: in proportion to the
    image area), never on the text, so every frame of an animation gets the same size; a caption
    too long for the width is shrunk, then cut.
    """
    picture = to_pil(image)
    width, height = picture.size
    font_size = font_size or max(11, min(28, round((width * height) ** 0.5 / 28)))
    pad = max(2, font_size // 3)
    bar_h = _line_height(load_font(font_size)) + 2 * pad
    block = fit_text(text, width - 2 * pad, font_size, max_lines=1)
    canvas = Image.new("RGB", (width, height + bar_h), BACKGROUND)
    canvas.paste(picture, (0, 0))
    block.draw(ImageDraw.Draw(canvas), (pad, height, width - pad, height + bar_h))
    return canvas


def note_font_size(width: int, height: int) -> int:
    """The font size of a note line under a frame of `width` × `height`: smaller than its caption, within [11, 24]."""
    return max(11, min(24, round((width * height) ** 0.5 / 34)))


def legend_bar(image: PictureLike, ramp: PictureLike, low: str, high: str, note: str,
               font_size: int | None = None) -> Image.Image:
    """Add a colour legend under a frame: `low` [ramp] `high` on one line, `note` (what the scale means)
    on the next. `ramp` is a colour bar picture (see `colormap.colorbar`), stretched to a third of the width."""
    picture = to_pil(image)
    width, height = picture.size
    font_size = font_size or note_font_size(width, height)
    font = load_font(font_size)
    pad = max(2, font_size // 3)
    line = _line_height(font)
    bar_w = max(16, width // 3)
    canvas = Image.new("RGB", (width, height + 2 * line + 3 * pad), BACKGROUND)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + pad
    low_w = draw.textlength(low, font=font)
    draw.text((pad, y), low, font=font, fill=TEXT_COLOR)
    bar_x = int(2 * pad + low_w)
    canvas.paste(to_pil(ramp).resize((bar_w, max(4, line - 2))), (bar_x, y + 1))
    draw.text((bar_x + bar_w + pad, y), high, font=font, fill=TEXT_COLOR)
    fit_text(note, width - 2 * pad, font_size, max_lines=1).draw(draw, (pad, y + line + pad, width - pad,
                                                                         y + 2 * line + pad))
    return canvas
