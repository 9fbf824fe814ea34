"""User errors (diffx/errors.py): one line, never longer than ERROR_LINE_CHARS, whatever text of the user's it
repeats."""

from diffx.errors import ERROR_LINE_CHARS, elide, error_line


def test_error_lines_stay_short_and_keep_the_fix():
    message = f"prompt {'x' * 10_000} is refused; give a shorter one"
    line = "error: " + error_line(message)
    assert len(line) == ERROR_LINE_CHARS and line.endswith("give a shorter one") and "\n" not in line
    assert error_line("short\nmessage") == "short message"


def test_elide_keeps_both_ends_of_a_long_text():
    assert elide("short") == "'short'"
    long = elide("a" * 100 + "b" * 100, keep=10)
    assert long.startswith("'aaaaaaaaaa'") and long.endswith("(200 characters)")
