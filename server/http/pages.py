"""The pages people open in a browser: `/chat` and the trace viewer `/debug/traces`.

Plain files from `server/web/` (HTML, ES modules, CSS, an SVG favicon, also
answered at `/favicon.ico`; no build step). Only the files listed in `_FILES` are
served, read once at import (a served name is a dictionary key, never a path):
anything else under `/static/` is a 404.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePath

from quart import Blueprint, Response

from server.errors import NotFound

pages = Blueprint("pages", __name__)

# Package data (`server/web/*` in the wheel), read through importlib.resources.
WEB_DIR = resources.files("server") / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The files `/static/<name>` serves: everything in server/web with a known type.
_FILES = frozenset({"chat.html", "chat.js", "traces.html", "traces.js", "style.css", "common.js",
                    "favicon.svg"})


def _load() -> dict[str, tuple[bytes, str]]:
    """Every served file, read once at import: no file I/O on the event loop later."""
    files = {}
    for name in _FILES:
        files[name] = ((WEB_DIR / name).read_bytes(), _TYPES[PurePath(name).suffix])
    return files


_CONTENT = _load()


def _serve(name: str) -> Response:
    found = _CONTENT.get(name)
    if found is None:
        raise NotFound(f"no static file {name!r}")
    body, content_type = found
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@pages.get("/chat")
async def chat_page() -> Response:
    return _serve("chat.html")


@pages.get("/debug/traces")
async def traces_page() -> Response:
    return _serve("traces.html")


@pages.get("/favicon.ico")
async def favicon() -> Response:
    # The pages name /static/favicon.svg; this is for what browsers ask by default
    # (a JSON endpoint opened in a tab), which would otherwise be a 404.
    return _serve("favicon.svg")


@pages.get("/static/<path:name>")
async def static_file(name: str) -> Response:
    return _serve(name)
