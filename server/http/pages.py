"""The pages people open in a browser: `/chat` and the trace viewer `/debug/traces`.

(Being built: see issue 5.)"""

from __future__ import annotations

from quart import Blueprint

pages = Blueprint("pages", __name__)
