"""`python -m diffx …`: the same app as the `diffx` command."""

from diffx.cli import app

if __name__ == "__main__":
    app(prog_name="diffx")
