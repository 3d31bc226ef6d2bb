"""The browser pages: `/chat` and `/debug/traces`, served by the node (static routes
checked in-process), and driven in Debian's chromium against a real 3-node cluster:
two users on two nodes chat, see each other's presence and share KV; a message's
trace id opens the waterfall with spans from both nodes; the page of a node that is
stopped shows "reconnecting…" and is connected again once the node is back."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser.conftest import SCREENSHOTS, NodeProc, wait_converged
from tests.e2e.processes import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


def update_readme_screenshot(taken: str, name: str) -> None:
    """README's screenshots are refreshed on request only (UPDATE_README_SCREENSHOTS=1),
    so a test run never leaves the checkout modified."""
    if os.environ.get("UPDATE_README_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOTS / taken, DOCS_SCREENSHOTS / name)
UI_TIMEOUT_MS = 15_000
CONNECTED = re.compile(r"^connected as ")  # not "not connected", "reconnecting…"


# -- the static routes (in-process node) -------------------------------------------

async def test_pages_and_static_files_are_served(http: httpx.AsyncClient) -> None:
    for path, kind in (("/chat", "text/html"), ("/debug/traces", "text/html"),
                       ("/static/chat.js", "text/javascript"), ("/static/traces.js", "text/javascript"),
                       ("/static/common.js", "text/javascript"), ("/static/style.css", "text/css")):
        r = await http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(kind), (path, r.headers["content-type"])
        assert r.headers["cache-control"] == "no-cache", path
    page = (await http.get("/chat")).text
    assert 'role="status"' in page and "/static/chat.js" in page
    root = await http.get("/")
    assert root.text == "Hello World" and root.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("path", [
    "/static/../settings.py", "/static/..%2Fsettings.py", "/static/%2Fetc/passwd", "/static//etc/passwd",
    "/static/nope.js", "/static/chat.js/x", "/static/__init__.py", "/static/%2E%2E/app.py"])
async def test_static_refuses_anything_else(http: httpx.AsyncClient, path: str) -> None:
    # (Werkzeug first merges `//` with a 308 redirect; where that leads is a 404 too.)
    r = await http.get(path, follow_redirects=True)
    assert r.status_code == 404, (path, r.status_code)
    assert "import" not in r.text


# -- helpers ---------------------------------------------------------------------------

def connect(page: Page, node: NodeProc, user: str, rooms: tuple[str, ...]) -> None:
    from playwright.sync_api import expect

    page.goto(f"{node.url}/chat")
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.get_by_role("status")).to_have_text(CONNECTED, timeout=UI_TIMEOUT_MS)
    for room in rooms:
        page.get_by_label("Room to join").fill(room)
        page.get_by_role("button", name="Join", exact=True).click()
        expect(page.get_by_role("tab", name=room)).to_be_visible()
    page.get_by_role("tab", name=rooms[0]).click()


def say(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send", exact=True).click()


def member(page: Page, user: str, node: str) -> Locator:
    return page.locator(f'#members li[data-user="{user}"][data-node="{node}"]')


# -- against a real cluster ------------------------------------------------------------

def test_two_users_on_two_nodes_chat_presence_and_kv(browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, n2, _ = cluster
    alice = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    bob = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    connect(alice, n1, "alice", ("lobby", "ops"))
    expect(alice.locator("#my-node")).to_have_text("n1", timeout=UI_TIMEOUT_MS)
    connect(bob, n2, "bob", ("lobby",))

    # Presence: alice learns of bob by push, bob got alice in his join reply; each with its node.
    expect(member(alice, "bob", "n2")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(member(bob, "alice", "n1")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(member(alice, "alice", "n1")).to_be_visible()

    say(alice, "hello from n1")
    say(bob, "hi alice, bob on n2 here")
    for page in (alice, bob):
        for text in ("hello from n1", "bob on n2"):
            expect(page.locator("#messages .message", has_text=text)).to_be_visible(timeout=UI_TIMEOUT_MS)
    # Every message carries its trace id as a link to the built-in viewer.
    link = bob.locator("#messages .message", has_text="hello from n1").locator("a.trace-link")
    href = link.get_attribute("href") or ""
    assert re.fullmatch(r"/debug/traces#[0-9a-f]{32}", href), href

    # A second room is separate: bob is not in "ops".
    alice.get_by_role("tab", name="ops").click()
    say(alice, "ops only")
    expect(alice.locator("#messages .message", has_text="ops only")).to_be_visible()
    bob.wait_for_timeout(300)
    expect(bob.locator("#messages .message", has_text="ops only")).to_have_count(0)
    alice.get_by_role("tab", name="lobby").click()

    # KV: put on alice's page (n1), get on bob's (n2).
    value = {"colour": "teal", "n": [1, 2, 3]}
    alice.get_by_label("Key", exact=True).fill("browser/cfg")
    alice.get_by_label("Value (JSON)").fill(json.dumps(value))
    alice.get_by_role("button", name="Put", exact=True).click()
    expect(alice.locator("#kv-result")).to_contain_text("stored on n1", timeout=UI_TIMEOUT_MS)
    expect(alice.locator("#kv-result a.trace-link")).to_be_visible()
    bob.get_by_label("Key", exact=True).fill("browser/cfg")
    bob.get_by_role("button", name="Get", exact=True).click()
    expect(bob.locator("#kv-result")).to_contain_text("found", timeout=UI_TIMEOUT_MS)
    assert json.loads(bob.locator("#kv-result pre").inner_text()) == value
    # Invalid JSON is refused in the page; delete works and a second get finds nothing.
    bob.get_by_label("Value (JSON)").fill("{nope")
    bob.get_by_role("button", name="Put", exact=True).click()
    expect(bob.locator("#kv-result")).to_contain_text("not valid JSON")
    bob.get_by_role("button", name="Delete", exact=True).click()
    expect(bob.locator("#kv-result")).to_contain_text("deleted", timeout=UI_TIMEOUT_MS)
    alice.get_by_role("button", name="Get", exact=True).click()
    expect(alice.locator("#kv-result")).to_contain_text("not found", timeout=UI_TIMEOUT_MS)

    # The nodes panel lists all three, up.
    expect(alice.locator('#nodes-body tr[data-status="up"]')).to_have_count(3, timeout=UI_TIMEOUT_MS)

    alice.get_by_label("Key", exact=True).fill("greeting")
    alice.get_by_label("Value (JSON)").fill('{"hello": "world"}')
    alice.get_by_role("button", name="Put", exact=True).click()
    expect(alice.locator("#kv-result")).to_contain_text("stored", timeout=UI_TIMEOUT_MS)
    alice.screenshot(path=str(SCREENSHOTS / "chat-alice.png"), full_page=True)
    bob.screenshot(path=str(SCREENSHOTS / "chat-bob.png"), full_page=True)
    update_readme_screenshot("chat-alice.png", "chat.png")

    # Phone width: nothing overflows sideways.
    alice.set_viewport_size({"width": 375, "height": 800})
    overflow = alice.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, overflow
    alice.screenshot(path=str(SCREENSHOTS / "chat-phone.png"), full_page=True)
    alice.context.close()
    bob.context.close()


def test_message_trace_link_opens_waterfall_with_spans_of_both_nodes(
        browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, n2, _ = cluster
    if httpx.get(f"{n2.url}/debug/traces/api/traces", timeout=5).status_code == 404:
        pytest.skip("the trace API (GET /debug/traces/api/traces) is not served yet")
    alice = browser.new_context().new_page()
    bob = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    connect(alice, n1, "alice", ("traced",))
    connect(bob, n2, "bob", ("traced",))
    expect(member(alice, "bob", "n2")).to_be_visible(timeout=UI_TIMEOUT_MS)
    say(alice, "follow this one")
    message = bob.locator("#messages .message", has_text="follow this one")
    expect(message).to_be_visible(timeout=UI_TIMEOUT_MS)
    trace_id = message.locator("a.trace-link").get_attribute("data-trace-id")
    message.locator("a.trace-link").click()
    bob.wait_for_url(f"**/debug/traces#{trace_id}")
    rows = bob.locator("#waterfall .span-row")
    expect(rows.first).to_be_visible(timeout=UI_TIMEOUT_MS)
    # The sender's spans (n1) and the delivering node's chat.broadcast (n2).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        nodes = set(rows.evaluate_all("rs => rs.map(r => r.dataset.node)"))
        if {"n1", "n2"} <= nodes:
            break
        bob.reload()
        bob.wait_for_timeout(500)
    assert {"n1", "n2"} <= nodes, nodes
    expect(bob.locator("#waterfall .span-row", has_text="websocket.message")).to_be_visible()
    bob.locator('#waterfall .span-row[data-node="n2"]', has_text="chat.broadcast").first.click()
    detail = bob.locator("#span-detail")
    expect(detail).to_be_visible()
    expect(detail.locator(".span-node")).to_have_text("n2")
    expect(detail).to_contain_text("chat.room")
    bob.screenshot(path=str(SCREENSHOTS / "waterfall.png"), full_page=True)
    update_readme_screenshot("waterfall.png", "waterfall.png")
    # The list shows recent traces, and filters by span name.
    bob.get_by_label("Span name").fill("websocket.message")
    bob.get_by_role("button", name="Search", exact=True).click()
    expect(bob.locator("#traces-body tr").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    alice.context.close()
    bob.context.close()


def test_page_reconnects_and_rejoins_after_its_node_restarts(browser: Browser,
                                                             cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, _, n3 = cluster
    alice = browser.new_context().new_page()
    carol = browser.new_context().new_page()
    connect(alice, n1, "alice", ("restart",))
    connect(carol, n3, "carol", ("restart",))
    expect(member(alice, "carol", "n3")).to_be_visible(timeout=UI_TIMEOUT_MS)
    status = carol.get_by_role("status")

    assert n3.stop() == 0, n3.output()
    expect(status).to_contain_text("reconnecting", timeout=UI_TIMEOUT_MS)
    carol.screenshot(path=str(SCREENSHOTS / "reconnecting.png"), full_page=True)
    # The survivors drop carol from presence once n3 is marked down.
    expect(member(alice, "carol", "n3")).to_have_count(0, timeout=UI_TIMEOUT_MS)

    n3.start()
    n3.wait_ready()
    wait_converged(cluster)
    expect(status).to_have_text(CONNECTED, timeout=30_000)
    # Rejoined by itself: alice sees carol again, and messages flow both ways.
    expect(member(alice, "carol", "n3")).to_be_visible(timeout=UI_TIMEOUT_MS)
    say(alice, "welcome back")
    expect(carol.locator("#messages .message", has_text="welcome back")).to_be_visible(timeout=UI_TIMEOUT_MS)
    carol.screenshot(path=str(SCREENSHOTS / "reconnected.png"), full_page=True)
    alice.context.close()
    carol.context.close()


def test_trace_links_go_to_grafana_only_for_an_http_url(browser: Browser, cluster: list[NodeProc]) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        href = f"async () => (await import('/static/common.js')).traceHref('{trace_id}')"
        page.goto(f"{cluster[0].url}/chat?grafana=javascript:alert(1)")
        assert page.evaluate(href) == f"/debug/traces#{trace_id}"
        page.goto(f"{cluster[0].url}/chat?grafana=http://grafana.example:3000/")
        assert page.evaluate(href).startswith("http://grafana.example:3000/explore?")
        page.goto(f"{cluster[0].url}/chat")  # remembered in the browser
        assert page.evaluate(href).startswith("http://grafana.example:3000/explore?")
        page.goto(f"{cluster[0].url}/chat?grafana=")  # cleared
        assert page.evaluate(href) == f"/debug/traces#{trace_id}"
    finally:
        context.close()
