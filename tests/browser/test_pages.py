"""The browser pages: `/chat` and `/debug/traces`, served by the node (static routes
checked in-process), and driven in Debian's chromium against a real 3-node cluster
whose nodes have their real default names (`webserver@127.0.0.1:PORT`): two users on
two nodes chat, see each other's presence and share KV, and nothing overflows a
phone's width; a message's trace link opens the waterfall in a new tab (the chat
goes on) with spans from both nodes, each node in the same colour on every node's
viewer; the trace list is the cluster's, without the chat page's own polling; the
page of a node that is stopped shows "reconnecting…", offers the other nodes, and
is connected again once the node is back; a trace missing that node's spans says
it is partial."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import TYPE_CHECKING, Any

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
COUNTS = re.compile(r"(\d+) span\(s\) on (\d+) node\(s\)")


# -- the static routes (in-process node) -------------------------------------------

async def test_pages_and_static_files_are_served(http: httpx.AsyncClient) -> None:
    for path, kind in (("/chat", "text/html"), ("/debug/traces", "text/html"),
                       ("/static/chat.js", "text/javascript"), ("/static/traces.js", "text/javascript"),
                       ("/static/common.js", "text/javascript"), ("/static/style.css", "text/css"),
                       ("/static/favicon.svg", "image/svg+xml"), ("/favicon.ico", "image/svg+xml")):
        r = await http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(kind), (path, r.headers["content-type"])
        assert r.headers["cache-control"] == "no-cache", path
    page = (await http.get("/chat")).text
    assert 'role="status"' in page and "/static/chat.js" in page
    for html in (page, (await http.get("/debug/traces")).text):
        assert '<link rel="icon" href="/static/favicon.svg"' in html
    assert (await http.get("/static/favicon.svg")).text.startswith("<svg")
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


def sideways_overflow(page: Page) -> dict[str, float]:
    """How far (px) the page is wider than its viewport, the header narrower than the page,
    and the nodes table wider than its card (0 or less: fits)."""
    result: dict[str, float] = page.evaluate("""() => {
        const doc = document.documentElement;
        const table = document.querySelector("table.nodes");
        const card = table.closest(".panel");
        const inner = card.getBoundingClientRect().right - parseFloat(getComputedStyle(card).paddingRight);
        return {page: doc.scrollWidth - doc.clientWidth,
                header: doc.scrollWidth - document.querySelector(".topbar").getBoundingClientRect().width,
                table: table.getBoundingClientRect().right - inner,
                tableScroll: table.scrollWidth - table.clientWidth};
    }""")
    return result


def trace_link_target(link: Locator) -> tuple[str | None, str | None]:
    return link.get_attribute("target"), link.get_attribute("rel")


def waterfall_colours(page: Page) -> dict[str, str]:
    """node -> the colour of its bars in the waterfall (one colour per node, the legend's too)."""
    seen: dict[str, list[str]] = page.evaluate("""() => {
        const out = {};
        const add = (node, el) => (out[node] ||= []).push(getComputedStyle(el).backgroundColor);
        for (const row of document.querySelectorAll("#waterfall .span-row"))
            add(row.dataset.node, row.querySelector(".span-bar"));
        for (const li of document.querySelectorAll("#node-legend li"))
            add(li.dataset.node, li.querySelector(".swatch"));
        return out;
    }""")
    for node, colours in seen.items():
        assert len(set(colours)) == 1, (node, colours)
    return {node: colours[0] for node, colours in seen.items()}


def wait_for_trace_nodes(page: Page, nodes: set[str], timeout: float = 10) -> set[str]:
    """Reload the viewer until the waterfall has spans of every node in `nodes`."""
    from playwright.sync_api import expect

    rows = page.locator("#waterfall .span-row")
    deadline = time.monotonic() + timeout
    while True:
        expect(rows.first).to_be_visible(timeout=UI_TIMEOUT_MS)
        seen = set(rows.evaluate_all("rs => rs.map(r => r.dataset.node)"))
        if nodes <= seen or time.monotonic() > deadline:
            return seen
        page.wait_for_timeout(300)
        page.reload()


def header_counts_agree_with_waterfall(page: Page) -> None:
    """The title's and the status's span and node counts are the waterfall's."""
    rows = page.locator("#waterfall .span-row")
    drawn = rows.count()
    nodes = len(set(rows.evaluate_all("rs => rs.map(r => r.dataset.node)")))
    for text in (page.locator("#trace-title").inner_text(), page.locator("#viewer-status").inner_text()):
        found = COUNTS.search(text)
        assert found is not None, text
        assert (int(found[1]), int(found[2])) == (drawn, nodes), (text, drawn, nodes)
    assert page.locator("#node-legend li").count() == nodes


def api(node: NodeProc, path: str, **params: str) -> Any:
    return httpx.get(f"{node.url}/debug/traces/api/traces{path}", params=params, timeout=10).json()


# -- against a real cluster ------------------------------------------------------------

def test_two_users_on_two_nodes_chat_presence_and_kv(browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, n2, _ = cluster
    alice = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    bob = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    connect(alice, n1, "alice", ("lobby", "ops"))
    expect(alice.locator("#my-node")).to_have_text(n1.name, timeout=UI_TIMEOUT_MS)
    connect(bob, n2, "bob", ("lobby",))

    # Presence: alice learns of bob by push, bob got alice in his join reply; each with its node.
    expect(member(alice, "bob", n2.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(member(bob, "alice", n1.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(member(alice, "alice", n1.name)).to_be_visible()

    say(alice, "hello from n1")
    say(bob, "hi alice, bob on n2 here")
    for page in (alice, bob):
        for text in ("hello from n1", "bob on n2"):
            expect(page.locator("#messages .message", has_text=text)).to_be_visible(timeout=UI_TIMEOUT_MS)
    # Every message carries its trace id as a link to the built-in viewer.
    link = bob.locator("#messages .message", has_text="hello from n1").locator("a.trace-link")
    href = link.get_attribute("href") or ""
    assert re.fullmatch(r"/debug/traces#[0-9a-f]{32}", href), href
    # ... in a new tab: the chat's own tab keeps its session.
    assert trace_link_target(link) == ("_blank", "noopener")

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
    expect(alice.locator("#kv-result")).to_contain_text(f"stored on {n1.name}", timeout=UI_TIMEOUT_MS)
    expect(alice.locator("#kv-result a.trace-link")).to_be_visible()
    assert trace_link_target(alice.locator("#kv-result a.trace-link")) == ("_blank", "noopener")
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

    # Phone widths: nothing overflows sideways, not even the nodes table of long real names.
    expect(alice.locator("#nodes-body tr").first).to_contain_text(n1.name)
    for width in (420, 375):
        alice.set_viewport_size({"width": width, "height": 800})
        overflow = sideways_overflow(alice)
        assert all(v <= 0.5 for v in overflow.values()), (width, overflow)
    alice.screenshot(path=str(SCREENSHOTS / "chat-phone.png"), full_page=True)
    alice.context.close()
    bob.context.close()


def test_message_trace_link_opens_waterfall_in_a_new_tab_with_spans_of_both_nodes(
        browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, n2, _ = cluster
    alice = browser.new_context().new_page()
    bob = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    connect(alice, n1, "alice", ("traced",))
    connect(bob, n2, "bob", ("traced",))
    expect(member(alice, "bob", n2.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
    say(alice, "follow this one")
    message = bob.locator("#messages .message", has_text="follow this one")
    expect(message).to_be_visible(timeout=UI_TIMEOUT_MS)
    trace_id = message.locator("a.trace-link").get_attribute("data-trace-id")
    with bob.context.expect_page() as opened:
        message.locator("a.trace-link").click()
    viewer = opened.value
    viewer.wait_for_url(f"**/debug/traces#{trace_id}")
    # The chat stays where it was, still connected.
    assert bob.url == f"{n2.url}/chat"
    expect(bob.get_by_role("status")).to_have_text(CONNECTED)

    # The sender's spans (n1) and the delivering node's chat.broadcast (n2).
    nodes = wait_for_trace_nodes(viewer, {n1.name, n2.name})
    assert {n1.name, n2.name} <= nodes, nodes
    expect(viewer.locator("#waterfall .span-row", has_text="websocket.message")).to_be_visible()
    header_counts_agree_with_waterfall(viewer)
    expect(viewer.locator("#viewer-status")).to_have_class(re.compile(r"\bstatus-connected\b"))
    expect(viewer.locator("#viewer-status")).to_contain_text("complete trace")
    # The title got focus for screen readers, without an outline; Tab still shows where focus is.
    assert viewer.evaluate("document.activeElement.id") == "trace-title"
    assert viewer.evaluate("getComputedStyle(document.getElementById('trace-title')).outlineStyle") == "none"
    viewer.keyboard.press("Tab")
    focused = viewer.evaluate("""() => ({cls: document.activeElement.className,
                                         outline: getComputedStyle(document.activeElement).outlineStyle})""")
    assert "span-row" in focused["cls"] and focused["outline"] == "solid", focused

    viewer.locator(f'#waterfall .span-row[data-node="{n2.name}"]', has_text="chat.broadcast").first.click()
    detail = viewer.locator("#span-detail")
    expect(detail).to_be_visible()
    expect(detail.locator(".span-node")).to_have_text(n2.name)
    expect(detail).to_contain_text("chat.room")
    viewer.screenshot(path=str(SCREENSHOTS / "waterfall.png"), full_page=True)
    update_readme_screenshot("waterfall.png", "waterfall.png")

    # Each node keeps its colour on another node's viewer, where nodes come in another order.
    colours = waterfall_colours(viewer)
    elsewhere = alice.context.new_page()
    elsewhere.goto(f"{n1.url}/debug/traces#{trace_id}")
    wait_for_trace_nodes(elsewhere, set(colours))
    assert waterfall_colours(elsewhere) == colours

    # The list is the cluster's: the message's trace once, under its root, with both nodes.
    viewer.get_by_label("Span name").fill("websocket.message")
    viewer.get_by_role("button", name="Search", exact=True).click()
    row = viewer.locator("#traces-body tr", has=viewer.locator(f'a[title="{trace_id}"]'))
    expect(row).to_have_count(1, timeout=UI_TIMEOUT_MS)
    expect(row.locator("td").first).to_have_text("websocket.message")
    expect(row.locator("td").nth(4)).to_contain_text(n1.name)
    expect(row.locator("td").nth(4)).to_contain_text(n2.name)
    expect(viewer.locator("#list-scope")).to_contain_text("Whole cluster: 3 node(s) answered")
    alice.context.close()
    bob.context.close()


def test_trace_list_leaves_out_the_chat_pages_own_polling(browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, n2, _ = cluster
    context = browser.new_context()
    try:
        chat = context.new_page()
        chat.goto(f"{n2.url}/chat")  # polls GET /nodes every 2 s
        expect(chat.locator('#nodes-body tr[data-status="up"]')).to_have_count(3, timeout=UI_TIMEOUT_MS)
        chat.wait_for_timeout(2500)
        polled = api(n1, "", name="GET /nodes", include_polling="1")["traces"]
        assert any(t["polling"] and t["root_node"] == n2.name for t in polled), polled

        viewer = context.new_page()
        viewer.goto(f"{n1.url}/debug/traces")
        expect(viewer.locator("#list-message")).to_contain_text("newest first", timeout=UI_TIMEOUT_MS)
        expect(viewer.locator("#list-message")).to_contain_text("polling trace(s) of the chat page left out")
        expect(viewer.locator("#polling-hint")).to_contain_text("?poll=1")
        # (The tests' own unmarked GET /nodes stay listed: only the page's polling is left out.)
        assert not any(t["polling"] for t in api(n1, "")["traces"])
        rows = viewer.locator("#traces-body tr", has_text="GET /nodes")
        left_out = rows.count()
        viewer.get_by_label("Include the chat page's polling").check()
        viewer.get_by_role("button", name="Search", exact=True).click()
        expect(viewer.locator("#list-message")).not_to_contain_text("left out", timeout=UI_TIMEOUT_MS)
        assert rows.count() > left_out
        # "This node only" says so.
        viewer.get_by_label("This node only").check()
        viewer.get_by_role("button", name="Search", exact=True).click()
        scope = viewer.locator("#list-scope")
        expect(scope).to_have_text(f"This node only: {n1.name}", timeout=UI_TIMEOUT_MS)
    finally:
        context.close()


def test_trace_viewer_has_no_empty_status_pill_a_favicon_and_fits_a_phone(
        browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 420, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{cluster[0].url}/debug/traces")
        expect(page.locator("#list-message")).to_contain_text("newest first", timeout=UI_TIMEOUT_MS)
        expect(page.locator("#viewer-status")).to_be_hidden()  # nothing to say: no pill
        overflow = "(d => d.scrollWidth - d.clientWidth)(document.documentElement)"
        assert page.evaluate(overflow) <= 0
        page.get_by_label("Include the chat page's polling").check()  # some trace to open, whatever ran
        page.get_by_role("button", name="Search", exact=True).click()
        page.locator("#traces-body a").first.click()
        expect(page.locator("#waterfall .span-row").first).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.locator("#viewer-status")).to_be_visible()
        assert page.evaluate(overflow) <= 0
        page.screenshot(path=str(SCREENSHOTS / "traces-phone.png"), full_page=True)
        for path in ("/debug/traces", "/chat"):
            page.goto(f"{cluster[0].url}{path}")
            icon = page.locator('link[rel="icon"]').get_attribute("href")
            assert icon is not None, path
            r = page.request.get(f"{cluster[0].url}{icon}")
            assert r.status == 200 and r.headers["content-type"] == "image/svg+xml", (path, r.status)
    finally:
        context.close()


def test_a_page_whose_node_dies_offers_the_other_nodes_and_the_trace_says_partial(
        browser: Browser, cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, n2, n3 = cluster
    alice = browser.new_context().new_page()
    carol = browser.new_context().new_page()
    connect(alice, n1, "alice", ("failover",))
    connect(carol, n3, "carol", ("failover",))
    expect(member(alice, "carol", n3.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(carol.locator('#nodes-body tr[data-status="up"]')).to_have_count(3, timeout=UI_TIMEOUT_MS)
    # A write on n1, replicated to n2 and n3: its trace has spans on all three.
    alice.get_by_label("Key", exact=True).fill("failover/k")
    alice.get_by_label("Value (JSON)").fill("1")
    alice.get_by_role("button", name="Put", exact=True).click()
    link = alice.locator("#kv-result a.trace-link")
    expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
    trace_id = link.get_attribute("data-trace-id") or ""
    deadline = time.monotonic() + 10
    while {s["node"] for s in api(n1, f"/{trace_id}").get("spans", [])} != {n1.name, n2.name, n3.name}:
        assert time.monotonic() < deadline, api(n1, f"/{trace_id}")
        time.sleep(0.1)
    try:
        assert n3.stop() == 0, n3.output()
        expect(carol.get_by_role("status")).to_contain_text("reconnecting", timeout=UI_TIMEOUT_MS)
        offer = carol.locator("#failover")
        expect(offer).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(offer).to_contain_text("This node is not answering")
        links = offer.locator("a.failover-link")
        expect(links).to_have_count(2)
        hrefs = {a.get_attribute("data-node"): a.get_attribute("href") for a in links.all()}
        assert hrefs == {n.name: f"{n.url}/chat?username=carol&rooms=failover" for n in (n1, n2)}, hrefs
        carol.screenshot(path=str(SCREENSHOTS / "failover.png"), full_page=True)

        # The write's trace, seen from n1, lacks n3's spans: partial, in the warning colour.
        viewer = alice.context.new_page()
        viewer.goto(f"{n1.url}/debug/traces#{trace_id}")
        status = viewer.locator("#viewer-status")
        expect(status).to_contain_text("partial trace", timeout=UI_TIMEOUT_MS)
        expect(status).to_have_class(re.compile(r"\bstatus-warn\b"))
        assert viewer.evaluate("getComputedStyle(document.getElementById('viewer-status')).backgroundColor") \
            != "rgb(215, 245, 223)"  # not the "connected" green
        expect(viewer.locator("#partial-banner")).to_contain_text(n3.name)
        header_counts_agree_with_waterfall(viewer)
        expect(viewer.locator("#list-scope")).to_contain_text("Partial", timeout=UI_TIMEOUT_MS)
        expect(viewer.locator("#list-scope")).to_contain_text(n3.name)
        viewer.screenshot(path=str(SCREENSHOTS / "waterfall-partial.png"), full_page=True)

        # Following the offer: carol is on n1, in her room again.
        links.filter(has_text=n1.name).click()
        carol.wait_for_url(f"{n1.url}/chat?**")
        expect(carol.get_by_role("status")).to_have_text(CONNECTED, timeout=UI_TIMEOUT_MS)
        expect(carol.locator("#my-node")).to_have_text(n1.name, timeout=UI_TIMEOUT_MS)
        expect(carol.get_by_role("tab", name="failover")).to_be_visible()
        expect(member(alice, "carol", n1.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(carol.locator("#failover")).to_be_hidden()
    finally:
        if n3.proc is None or n3.proc.poll() is not None:
            n3.start()
            n3.wait_ready()
        wait_converged(cluster)
        alice.context.close()
        carol.context.close()


def test_page_reconnects_and_rejoins_after_its_node_restarts(browser: Browser,
                                                             cluster: list[NodeProc]) -> None:
    from playwright.sync_api import expect

    n1, _, n3 = cluster
    alice = browser.new_context().new_page()
    carol = browser.new_context().new_page()
    connect(alice, n1, "alice", ("restart",))
    connect(carol, n3, "carol", ("restart",))
    expect(member(alice, "carol", n3.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
    status = carol.get_by_role("status")

    assert n3.stop() == 0, n3.output()
    expect(status).to_contain_text("reconnecting", timeout=UI_TIMEOUT_MS)
    carol.screenshot(path=str(SCREENSHOTS / "reconnecting.png"), full_page=True)
    # The survivors drop carol from presence once n3 is marked down.
    expect(member(alice, "carol", n3.name)).to_have_count(0, timeout=UI_TIMEOUT_MS)

    n3.start()
    n3.wait_ready()
    wait_converged(cluster)
    expect(status).to_have_text(CONNECTED, timeout=30_000)
    expect(carol.locator("#failover")).to_be_hidden()  # the offer goes once its node is back
    # Rejoined by itself: alice sees carol again, and messages flow both ways.
    expect(member(alice, "carol", n3.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
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
