"""Under the Hypercorn CLI, `hypercorn.error` gets a stderr handler of Hypercorn's own
after our logging is set up: its lines must still be written once, in our format.
(The real process: tests/e2e/test_process.py.)"""

from __future__ import annotations

import io
import logging

from hypercorn.config import Config
from hypercorn.logging import Logger

from server.logs import setup_logging


def test_hypercorn_cli_lines_are_written_once_in_our_format() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    hypercorn = logging.getLogger("hypercorn.error")
    saved = (hypercorn.handlers[:], hypercorn.propagate, hypercorn.level)
    handler = setup_logging("info", log_format="text", stream=stream)
    try:
        config = Config()
        config.errorlog = "-"  # what the CLI passes: a handler of Hypercorn's own
        # Hypercorn makes its logger when it first logs, after the app was imported.
        assert Logger(config).error_logger is hypercorn
        (theirs,) = hypercorn.handlers
        assert isinstance(theirs, logging.StreamHandler)
        theirs.setStream(stream)  # as on stderr: where ours writes
        hypercorn.info("Running on http://127.0.0.1:1 (CTRL + C to quit)")
        hypercorn.info("second line")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2, lines
        assert lines[0].endswith("INFO hypercorn.error: Running on http://127.0.0.1:1 (CTRL + C to quit)")
    finally:
        if handler is not None:
            root.removeHandler(handler)
        root.setLevel(level)
        hypercorn.handlers[:], hypercorn.propagate = saved[0], saved[1]
        hypercorn.setLevel(saved[2])


def test_a_hypercorn_log_file_is_left_alone() -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    level = root.level
    hypercorn = logging.getLogger("hypercorn.error")
    saved = hypercorn.handlers[:]
    handler = setup_logging("info", log_format="text", stream=ours)
    try:
        hypercorn.handlers = [logging.StreamHandler(theirs)]  # e.g. --error-logfile: elsewhere
        hypercorn.info("Running on")
        assert "Running on" in ours.getvalue() and "Running on" in theirs.getvalue()
    finally:
        if handler is not None:
            root.removeHandler(handler)
        root.setLevel(level)
        hypercorn.handlers = saved
