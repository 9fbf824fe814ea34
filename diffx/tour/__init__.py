"""The guided tour (`diffx tour`): the README's tour as data — for each concept the `diffx` command that makes its
pictures, the files it writes and the caption that says what to notice — and the index page that shows them.

- stops.py: `STOPS` (the one place for the captions), `Stop`, `TourFile`, `tour_files`, `check_tour_folder`
- page.py: `TourRun` (what ran), `render_index`, `write_index`

The commands themselves do the work: `diffx tour` (diffx/cli/tour.py) parses and runs each stop's command line with
the `diffx` app itself, so the command on the page is the one that made the pictures. From Python, the same:
`subprocess.run(["diffx", *stop.argv(folder)])` for each stop with `args`, then `write_index`.
"""

from diffx.tour.page import TourRun, render_index, write_index
from diffx.tour.stops import INDEX_NAME, STOPS, InTour, Stop, TourFile, check_tour_folder, tour_files

__all__ = ["INDEX_NAME", "STOPS", "InTour", "Stop", "TourFile", "TourRun", "check_tour_folder", "render_index",
           "tour_files", "write_index"]
