"""Tables: how CLIP reads a prompt, and the models diffx finds."""

from rich.console import Console

from diffx.models.tokenizer import ClipTokenizer
from diffx.views import tables
from diffx.weights.discovery import ModelSource


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_word_rows_map_words_to_tokens_and_cut_words_have_none():
    tokenized = ClipTokenizer.default().encode("a red circle")
    rows = list(tables.word_rows(tokenized))
    assert [row.word for row in rows] == ["a", "red", "circle"]
    assert rows[1].positions == [2] and rows[1].tokens == ["red</w>"] and rows[1].ids == [tokenized.ids[2]]
    long = ClipTokenizer.default().encode(" ".join(["red"] * 80) + " circle")
    cut = list(tables.word_rows(long))
    assert cut[74].positions == [75] and cut[-1].word == "circle" and cut[-1].positions == [] and cut[-1].tokens == []


def test_tokens_table_shows_words_tokens_ids_positions():
    tokenizer = ClipTokenizer.default()
    text = _render(tables.tokens_table(tokenizer.encode("a red circle")))
    assert "5 of 77 tokens" in text
    assert "circle</w>" in text and "7117" in text
    assert "49406" in text and "5–76" in text  # start id, padding positions
    long = tokenizer.encode(" ".join(["red"] * 80))
    text = _render(tables.tokens_table(long))
    assert "77 of 77 tokens" in text and "cut by the 77-token limit" in text


def test_models_table_marks_the_default(tmp_path):
    sources = [ModelSource(tmp_path / "a", "diffx", "diffx folder (tiny)"),
               ModelSource(tmp_path / "b", "diffusers", "diffusers folder")]
    text = _render(tables.models_table(sources))
    assert text.index("default") < text.index(str(tmp_path / "b"))
    assert "no model found" in _render(tables.models_table([]))


def test_tokens_table_summarises_a_long_cut_in_one_short_row():
    text = _render(tables.tokens_table(ClipTokenizer.default().encode("red " * 10_000)))
    cut = [line for line in text.splitlines() if "(cut)" in line]
    assert len(cut) == 1 and "tokens)" in cut[0]
    assert len(text) < 20_000 and "characters)" in text


def test_the_padding_row_names_the_models_own_pad_token():
    """SD1.x pads with the end token; SD 2.x (OpenCLIP) pads with "!" (id 0)."""
    tokenizer = ClipTokenizer.default()
    assert "<|endoftext|> × 72" in _render(tables.tokens_table(tokenizer.encode("a red circle")))
    sd2 = _render(tables.tokens_table(tokenizer.padded_with("!").encode("a red circle")))
    assert "! × 72" in sd2 and "<|endoftext|> × 72" not in sd2
