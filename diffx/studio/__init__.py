"""diffx studio: a live page where a learner types a prompt and watches every denoising step arrive.

`create_app(model)` is the ASGI app (Starlette; `diffx studio` serves it with uvicorn): `app.py` the routes,
`engine.py` the generation that streams its steps, `edits.py` prompt-to-prompt from a finished run, `runs.py` the
queue (one run at a time, cancellation, a bounded LRU of finished runs), `security.py` the Host, Origin and token
checks, `server.py` the server's launch; `static/` the page.
"""

from diffx.studio.app import create_app
from diffx.studio.server import serve

__all__ = ["create_app", "serve"]
