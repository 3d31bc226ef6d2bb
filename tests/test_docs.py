"""The docs say what the code does: README's commands exist, every setting is in
the configuration table (and only settings are), every CLI flag the docs use is
real, and every relative link lands on a file and heading that exist."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from server.__main__ import parse_args
from server.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_PAGE = ROOT / "docs" / "operations.md"
# WEBSERVER_* variables that steer loading or tools rather than being settings.
NOT_SETTINGS = {"WEBSERVER_CONFIG", "WEBSERVER_VALKEY_SERVER_BIN"}


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _code_lines(page: Path) -> list[str]:
    """Lines of fenced code blocks and inline code spans."""
    text = _text(page)
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line for block in blocks for line in block.splitlines()] + inline


def _make_targets() -> set[str]:
    makefile = _text(ROOT / "Makefile")
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_make_command_is_a_target(page: Path) -> None:
    targets = _make_targets()
    used = {m for line in _code_lines(page) for m in re.findall(r"(?:^|\s)make ([a-z][a-z-]*)", line)}
    assert used <= targets, f"{page.name}: no such make target: {sorted(used - targets)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_server_flag_in_the_docs_exists(page: Path) -> None:
    known = {name.replace("_", "-") for name in vars(parse_args([]))}
    for line in _code_lines(page):
        if "python -m server" not in line and not line.lstrip().startswith("webserver "):
            continue
        for flag in re.findall(r"\s--([a-z][a-z-]*)", line):
            assert flag in known, f"{page.name}: `--{flag}` is not a flag of python -m server: {line!r}"


def test_the_configuration_table_lists_every_setting_and_only_settings() -> None:
    table = _text(CONFIG_PAGE)
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| `(WEBSERVER_[A-Z_]+)`", table, flags=re.M))
    settings = {f.name for f in fields(Settings)}
    assert set(rows) == settings, (f"missing: {sorted(settings - set(rows))}, "
                                   f"not settings: {sorted(set(rows) - settings)}")
    assert all(env_name(name) == env for name, env in rows.items())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_webserver_variable_mentioned_is_a_setting(page: Path) -> None:
    known = {env_name(f.name) for f in fields(Settings)} | NOT_SETTINGS
    mentioned = set(re.findall(r"\bWEBSERVER_[A-Z_]*[A-Z]\b", _text(page)))
    assert mentioned <= known, f"{page.name}: unknown variables {sorted(mentioned - known)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_land_on_files_and_headings_that_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", _text(page), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", _text(dest), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: no heading #{anchor} in {dest.name}"
