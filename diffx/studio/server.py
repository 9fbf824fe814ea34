"""Launching the studio: check the address, make the token, serve `create_app` with uvicorn until Ctrl-C."""

from __future__ import annotations

import errno
import socket
import webbrowser
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from diffx.errors import InvalidArgumentError
from diffx.studio.app import create_app
from diffx.studio.security import LOCAL_HOSTS, new_token

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

DEFAULT_PORT = 7860  # the port Gradio's demos use, so a learner's muscle memory finds it


def check_address(host: str, port: int) -> None:
    """`host`:`port` can be bound now (one-line errors: a port out of range or in use, an unknown host)."""
    if not 1 <= port <= 65535:
        raise InvalidArgumentError(f"--port {port} is not a port; give one from 1 to 65535, e.g. {DEFAULT_PORT}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidArgumentError(f"--host {host!r} is not an address of this machine; use 127.0.0.1") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InvalidArgumentError(f"port {port} is in use (another studio?); pick another with --port "
                                           f"{port + 1}") from None
            raise InvalidArgumentError(f"cannot listen on {host}:{port} ({error.strerror}); "
                                       "use --host 127.0.0.1") from None


def studio_url(host: str, port: int, token: str | None) -> str:
    """The URL the user opens: the host as a browser writes it, with the token."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(model: StableDiffusion, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, token: bool = True,
          open_browser: bool = False, model_arg: str | None = None, preview: str = "auto",
          say: Callable[[str], None] = print) -> None:
    """Serve the studio for `model` on `host`:`port` until Ctrl-C (`diffx studio`).

    Binds the loopback address by default; another `host` is served too, after a warning (`say`), as anyone who
    can reach it and has the URL can run the model. `token`: require the per-launch token (as Jupyter does).
    """
    check_address(host, port)
    if host not in LOCAL_HOSTS:
        say(f"warning: serving on {host}: anyone who can reach this address and has the URL can run the model; "
            "use --host 127.0.0.1 to keep it on this machine")
    secret = new_token() if token else None
    hosts = (*LOCAL_HOSTS, host) if host not in LOCAL_HOSTS and host not in ("0.0.0.0", "::") else LOCAL_HOSTS
    if host in ("0.0.0.0", "::"):  # every interface: the browser may use any of this machine's names
        hosts = ("*",)
    app = create_app(model, token=secret, model_arg=model_arg, hosts=hosts, preview=preview)
    url = studio_url("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, secret)
    say(f"diffx studio: open {url}  (Ctrl-C stops it)")
    if open_browser:
        webbrowser.open(url)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
