"""The pages people open in a browser: `/chat` and the trace viewer `/debug/traces`.

Plain files from `server/web/` (HTML, ES modules, CSS; no build step). Only the
files listed in `_FILES` are served, read once at import (a served name is a
dictionary key, never a path): anything else under `/static/` is a 404.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response

from server.errors import NotFound

pages = Blueprint("pages", __name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The files `/static/<name>` serves: everything in server/web with a known type.
_FILES = frozenset({"chat.html", "chat.js", "traces.html", "traces.js", "style.css", "common.js"})


def _load() -> dict[str, tuple[bytes, str]]:
    """Every served file, read once at import: no file I/O on the event loop later."""
    files = {}
    for name in _FILES:
        path = WEB_DIR / name
        files[name] = (path.read_bytes(), _TYPES[path.suffix])
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


@pages.get("/static/<path:name>")
async def static_file(name: str) -> Response:
    return _serve(name)
