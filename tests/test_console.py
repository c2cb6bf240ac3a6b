"""The web console at /ui (issue 17): its HTTP serving, and the page itself driven in a real
headless Chromium (tests/browser.py) against etcdlite, with edits made by real ``etcdctl``.

Screenshots of every step go to ``$ETCDLITE_ARTIFACTS/console`` (else pytest's temporary
directory); the path is printed at the end of the module.  The browser tests skip where Debian's
chromium is absent, except under CI (``CI`` set), where ``make test`` has installed it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, available

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ROOT, EtcdProcess, etcdctl, free_port

UI_DIR = ROOT / "server" / "ui"


# -- serving -------------------------------------------------------------------------------------

def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    srv = EtcdProcess("etcdlite", tmp_path_factory.mktemp("console") / "data", args=["--unsafe-no-fsync"]).start()
    yield srv
    srv.stop()


def test_ui_is_served_from_the_package(console_server: EtcdProcess) -> None:
    port = console_server.port
    status, headers, _ = get(port, "/ui")
    assert (status, headers["location"]) == (301, "/ui/")  # relative asset URLs resolve below /ui/
    status, headers, body = get(port, "/ui/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="js/main.js">' in body
    assert "default-src 'self'" in headers["content-security-policy"]  # nothing from another origin
    assert headers["x-frame-options"] == "DENY"
    status, headers, body = get(port, "/ui/js/main.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert body == (UI_DIR / "js" / "main.js").read_bytes()
    assert get(port, "/ui/js/main.js", headers={"If-None-Match": headers["etag"]})[0] == 304
    status, headers, body = get(port, "/ui/style.css", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str((UI_DIR / "style.css").stat().st_size))
    assert get(port, "/ui/nope.js")[0] == 404
    assert get(port, "/ui/../pyproject.toml")[0] == 301  # cleaned like any path, never outside ui/
    assert get(port, "/ui/", method="POST")[0] == 405


def test_console_off_and_on_the_http_only_listener(tmp_path: Path) -> None:
    http_port = free_port()
    off = EtcdProcess("etcdlite", tmp_path / "off", args=["--console=false"]).start()
    on = EtcdProcess("etcdlite", tmp_path / "on",
                     args=["--listen-client-http-urls", f"http://127.0.0.1:{http_port}"]).start()
    try:
        assert get(off.port, "/ui/")[0] == 404
        assert get(off.port, "/health")[0] == 200
        assert get(http_port, "/ui/")[0] == 200  # --listen-client-http-urls serves it too
        assert f"http://127.0.0.1:{http_port}/ui" in on.log()  # where it is, in the start-up log
        assert "web console" not in off.log()
    finally:
        off.stop()
        on.stop()


def test_every_console_file_is_package_data() -> None:
    """A wheel carries what pyproject's packages and package-data name: every file under
    server/ui must match a glob of its directory's package, or the installed console would miss it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools["package-data"]
    for path in (p for p in UI_DIR.rglob("*") if p.is_file()):
        package = ".".join(["etcdlite", *path.parent.relative_to(ROOT / "server").parts])
        assert package in setuptools["packages"], path
        assert any(fnmatch(path.name, g) for g in data.get(package, [])), (path, data)
        assert path.suffix in (".html", ".js", ".css", ".svg"), path  # served with a known content type


# -- in the browser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Browser]:
    why = available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    base = os.environ.get("ETCDLITE_ARTIFACTS")
    artifacts = Path(base) / "console" if base else tmp_path_factory.mktemp("console-screenshots")
    shutil.rmtree(artifacts, ignore_errors=True)  # this run's screenshots only
    b = Browser(tmp_path_factory.mktemp("chromium-profile"), artifacts)
    yield b
    b.close()
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None and b.shots:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nconsole screenshots: {artifacts}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Browser]:
    """The browser, with no script error allowed in what the test did."""
    browser.driver.get_log("browser")  # drop what earlier tests left
    yield browser
    assert browser.errors() == []


def ctl(srv: EtcdProcess, *args: str, user: str | None = None) -> str:
    extra = ["--user", user] if user else []
    rc, out, err = etcdctl(srv.endpoint, *extra, *args)
    assert rc == 0, err
    return out


def show_prefix(b: Browser, prefix: str) -> None:
    """Roots the tree at ``prefix`` (the box above it)."""
    b.click('nav.tabs button[data-tab="keys"]')
    b.type("#prefix", prefix)
    b.click("#prefix-form button[type=submit]")
    b.wait(lambda: b.all(f'.row.dir[data-prefix="{prefix}"][aria-expanded="true"]'), f"the tree shows {prefix}")


def key_row(b: Browser, key: str) -> list[Any]:
    return b.all(f'#tree .row.key[data-key="{key}"]')


def run_module(b: Browser, body: str) -> Any:
    """Runs ``body`` (an async function body that may ``await import('js/x.js')``) in the page."""
    result = b.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"(async () => {{ {body} }})().then(done, (e) => done({{error: String(e) + e.stack}}));")
    assert not (isinstance(result, dict) and "error" in result), result
    return result


def test_tree_pages_through_directories_and_keys(page: Browser, console_server: EtcdProcess) -> None:
    """The listing jumps past each directory and pages 100 entries at a time: every entry once, in
    etcd's byte order, whatever mix of directories (many keys each) and keys a prefix holds."""
    kv = console_server.stubs().kv
    keys = [b"/pages/d%03d/%s" % (i, leaf) for i in range(150) for leaf in (b"x", b"y", b"z\xff")]
    keys += [b"/pages/k%03d" % i for i in range(0, 150)] + [b"/pages/", b"/pages0"]
    kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k)) for k in keys[:100]]))
    for k in keys[100:]:
        kv.Put(pb.PutRequest(key=k))
    page.open(console_server.endpoint + "/ui/#server")
    result = run_module(page, """
        const { KeyTree } = await import('./js/tree.js');
        const tree = new KeyTree(document.createElement('ul'), { onKey() {}, onDir() {} });
        const node = tree.rootNode({ lo: '/pages/', hi: '/pages0' }, '/pages/');
        const pages = [];
        window.__calls.length = 0;
        let cursor = node.lo;
        while (cursor !== null) {
          const page = await tree.list(node, cursor, 100);
          pages.push(page.entries.map((e) => e.seg));
          cursor = page.cursor;
        }
        return { pages, requests: window.__calls.length };
    """)
    expected = [""] + [f"d{i:03d}/" for i in range(150)] + [f"k{i:03d}" for i in range(150)]
    assert [len(p) for p in result["pages"]] == [100, 100, 100, 1]
    assert sum(result["pages"], []) == expected
    # a page of keys costs one range; a directory one more at most (the jump past it)
    assert result["requests"] <= 150 + 5, result["requests"]


def test_value_helpers_in_the_browser(page: Browser, console_server: EtcdProcess) -> None:
    page.open(console_server.endpoint + "/ui/#server")
    result = run_module(page, """
        const bytes = await import('./js/bytes.js');
        const { diffLines } = await import('./js/diff.js');
        let bad = 0;
        for (let t = 0; t < 500; t++) {
          const r = () => Array.from({ length: Math.floor(Math.random() * 9) }, () => 'abc'[Math.floor(Math.random() * 3)]).join('\\n');
          const [a, b] = [r(), r()];
          const d = diffLines(a, b);
          if (d.filter((e) => e.op !== '+').map((e) => e.line).join('\\n') !== a
              || d.filter((e) => e.op !== '-').map((e) => e.line).join('\\n') !== b) bad++;
        }
        return {
          bad,
          ends: ['a', 'a\\xff', '\\xff\\xff', ''].map(bytes.prefixEnd),
          shown: [bytes.displayKey('\\xc3\\xa9t\\xc3\\xa9\\n'), bytes.displayKey('\\x00\\xffk')],
          parsed: bytes.parseKey('\\\\x00é') === '\\x00\\xc3\\xa9',
          lease: [bytes.leaseHex('7587892097187093505'), bytes.leaseFromHex('694d9ba8f6d49c01')],
          hex: bytes.hexDump('ab\\x00'),
        };
    """)
    assert result["bad"] == 0
    assert result["ends"] == ["b", "b", None, None]
    assert result["shown"] == ["été\\x0a", "\\x00\\xffk"]
    assert result["parsed"] is True
    assert result["lease"] == ["694d9ba8f6d49c01", "7587892097187093505"]
    assert result["hex"] == "00000000  61 62 00" + " " * 42 + "|ab.|"  # hexdump -C


def test_page_loads(page: Browser, console_server: EtcdProcess) -> None:
    page.open(console_server.endpoint + "/ui")
    assert page.driver.current_url.endswith("/ui/#keys")
    assert page.driver.title == "etcdlite console"
    revision = int(ctl(console_server, "endpoint", "status", "-w", "fields").split('"Revision" : ')[1].split()[0])
    page.wait(lambda: page.text("#stat-revision") == f"revision {revision}", "the bar shows the revision")
    assert page.text("#stat-members") == "members 1"
    assert page.text("#stat-alarms") == "alarms none"
    assert page.text("#user") == "auth off"
    page.wait(lambda: page.text("#tree-state") == "live", "the tree watches")
    # offline: everything the page loaded came from the server itself
    loaded = page.js("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert loaded and all(url.startswith(console_server.endpoint + "/") for url in loaded), loaded
    page.screenshot("loaded")
    page.click('nav.tabs button[data-tab="server"]')
    page.wait(lambda: "8e9e05c52164694d" in page.text("#members"), "the member list")
    page.screenshot("server")


def test_put_with_etcdctl_appears_in_the_tree_and_the_watch_feed(page: Browser, console_server: EtcdProcess) -> None:
    page.open(console_server.endpoint + "/ui/#watch")
    page.type("#watch-key", "/feed/")
    page.click("#watch-start")
    page.wait(lambda: page.text("#watch-state").startswith("watching prefix /feed/"), "the feed watches")
    ctl(console_server, "put", "/feed/a", "hello")
    page.wait(lambda: page.all('#feed tr[data-key="/feed/a"]'), "the put is in the feed")
    row = page.text('#feed tr[data-key="/feed/a"]')
    assert "PUT" in row and "hello" in row
    ctl(console_server, "del", "/feed/a")
    page.wait(lambda: "DELETE" in page.text("#feed tbody tr"), "the delete is in the feed (newest first)")
    page.screenshot("watch-feed")

    show_prefix(page, "/feed/")
    assert page.wait(lambda: page.text("#tree .note") == "no keys", "an empty prefix")
    ctl(console_server, "put", "/feed/b", "x")
    ctl(console_server, "put", "/feed/sub/c", "y")
    page.wait(lambda: key_row(page, "/feed/b"), "the put is in the tree, with no reload")
    page.wait(lambda: page.text('.row.dir[data-prefix="/feed/"] .count') == "2", "the prefix counts 2 keys")
    page.wait(lambda: page.text('.row.dir[data-prefix="/feed/sub/"] .count') == "1", "the directory counts 1")
    page.screenshot("tree-live")


def test_a_lease_counts_down_and_its_key_goes_when_it_expires(page: Browser, console_server: EtcdProcess) -> None:
    lease = ctl(console_server, "lease", "grant", "5").split()[1]
    ctl(console_server, "put", "/leased/k", "v", f"--lease={lease}")
    page.open(console_server.endpoint + "/ui")
    show_prefix(page, "/leased/")
    page.wait(lambda: key_row(page, "/leased/k"), "the leased key is shown")
    page.click('nav.tabs button[data-tab="leases"]')
    row = f'#leases tr[data-lease="{lease}"]'
    page.wait(lambda: page.all(row), "the lease is listed")
    assert "/leased/k" in page.text(row)
    first = int(re.search(r"(\d+)s\s*$", page.text(f"{row} td.ttl") + " ").group(1))  # type: ignore[union-attr]
    page.screenshot("lease-counting")
    page.wait(lambda: int(page.text(f"{row} td.ttl").rstrip("s")) < first, "the TTL counts down", timeout=4)
    page.wait(lambda: not page.all(row), "the expired lease leaves the list", timeout=12)
    page.click('nav.tabs button[data-tab="keys"]')
    page.wait(lambda: not key_row(page, "/leased/k"), "its key leaves the tree")
    assert page.text("#tree .note") == "no keys"
    page.screenshot("lease-expired")


def test_history_and_diff_between_versions(page: Browser, console_server: EtcdProcess) -> None:
    for replicas in (1, 2, 3):
        ctl(console_server, "put", "/hist/cfg", f'{{"name": "web", "replicas": {replicas}}}')
    page.open(console_server.endpoint + "/ui")
    show_prefix(page, "/hist/")
    page.click('#tree .row.key[data-key="/hist/cfg"]')
    page.wait(lambda: len(page.all("#history tbody tr")) == 3, "three versions")
    assert page.css("#value").text == '{\n  "name": "web",\n  "replicas": 3\n}'  # JSON, pretty
    versions = [r.text.split()[0] for r in page.all("#history tbody tr")]
    assert versions == ["3", "2", "1"]
    diff = [line for line in page.css("pre.diff").text.splitlines() if line[:1] in "+-"]
    assert diff == ['-   "replicas": 2', '+   "replicas": 3']
    page.screenshot("history-diff")
    page.all("#history tbody tr")[1].find_element("css selector", "button").click()  # version 2 with version 1
    page.wait(lambda: '+   "replicas": 2' in page.css("pre.diff").text, "the diff of versions 1 and 2")
    assert '-   "replicas": 1' in page.css("pre.diff").text
    page.click('.segmented button[data-mode="hex"]')
    assert page.css("#value").text.startswith("00000000  7b 22 6e 61")
    page.click('.segmented button[data-mode="text"]')
    assert page.css("#value").text == '{"name": "web", "replicas": 3}'


def test_edits_wait_for_a_confirmation(page: Browser, console_server: EtcdProcess) -> None:
    ctl(console_server, "put", "/edit/k", "old")
    page.open(console_server.endpoint + "/ui")
    show_prefix(page, "/edit/")
    page.click('#tree .row.key[data-key="/edit/k"]')
    page.click("#key-edit")
    page.type("#edit-value", "new")
    page.click("#edit-save")
    page.wait(lambda: page.css("#confirm").is_displayed(), "the confirmation")
    assert "- old" in page.text("#confirm") and "+ new" in page.text("#confirm")
    page.screenshot("confirm-put")
    page.click("#confirm-cancel")
    assert ctl(console_server, "get", "/edit/k", "--print-value-only").strip() == "old"  # nothing without a yes

    ctl(console_server, "put", "/edit/k", "theirs")  # changed by someone else while the editor is open
    page.click("#edit-save")
    page.click("#confirm-ok")
    page.wait(lambda: "nothing was written" in page.text("#toasts .toast.error"), "the put refused")
    assert ctl(console_server, "get", "/edit/k", "--print-value-only").strip() == "theirs"  # not overwritten
    page.click("#toasts .toast.error button")
    page.click("#edit-cancel")
    page.wait(lambda: page.css("#value").text == "theirs", "the value as it is now")

    page.click("#key-edit")
    page.type("#edit-value", "new")
    page.click("#edit-save")
    page.wait(lambda: "- theirs" in page.text("#confirm"), "the diff against what is there now")
    page.click("#confirm-ok")
    page.wait(lambda: ctl(console_server, "get", "/edit/k", "--print-value-only").strip() == "new", "the put")
    page.wait(lambda: page.css("#value").text == "new", "the page shows the new value")

    page.click("#key-delete")
    page.click("#confirm-ok")
    page.wait(lambda: ctl(console_server, "get", "/edit/k") == "", "the delete")
    page.wait(lambda: not key_row(page, "/edit/k"), "the key leaves the tree")

    page.click("#new-key-button")
    page.type("#new-key", "/edit/made")
    page.type("#new-value", "by the console")
    page.click("#new-save")
    page.click("#confirm-ok")
    page.wait(lambda: key_row(page, "/edit/made"), "the new key is in the tree")
    assert ctl(console_server, "get", "/edit/made", "--print-value-only").strip() == "by the console"

    leases_before = ctl(console_server, "lease", "list")
    page.click('nav.tabs button[data-tab="leases"]')
    page.type("#grant-ttl", "600")
    page.click("#grant")
    page.click("#confirm-ok")
    page.wait(lambda: ctl(console_server, "lease", "list") != leases_before, "the grant")
    lease = ctl(console_server, "lease", "list").split()[-1]
    row = f'#leases tr[data-lease="{lease}"]'
    page.wait(lambda: page.all(row), "the granted lease is listed")
    page.css(f"{row} button.danger").click()
    page.wait(lambda: page.css("#confirm").is_displayed(), "the confirmation")
    page.click("#confirm-ok")
    page.wait(lambda: lease not in ctl(console_server, "lease", "list"), "the revoke")
    page.wait(lambda: not page.all(row), "the revoked lease leaves the list")
    page.screenshot("edits-done")


def test_compaction_waits_for_a_confirmation(page: Browser, tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--unsafe-no-fsync"]).start()
    try:
        for i in range(5):
            ctl(srv, "put", "k", str(i))  # revisions 2..6
        page.open(srv.endpoint + "/ui/#server")
        page.wait(lambda: page.text("#stat-compact") == "compacted 0", "no compaction yet")
        page.type("#compact-rev", "4")
        page.click("#compact")
        page.wait(lambda: page.css("#confirm").is_displayed(), "the confirmation")
        page.click("#confirm-ok")
        page.wait(lambda: page.text("#stat-compact") == "compacted 4", "the compact revision")
        rc, _, err = etcdctl(srv.endpoint, "get", "k", "--rev=3")
        assert rc != 0 and "required revision has been compacted" in err
        page.screenshot("compacted")
    finally:
        srv.stop()


def test_a_raised_alarm_shows(page: Browser, tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--unsafe-no-fsync", "--quota-backend-bytes=4096"]).start()
    try:
        for i in range(10):  # the quota is checked before a write: the one past it is refused
            rc, _, err = etcdctl(srv.endpoint, "put", f"big{i}", "x" * 8192)
            if rc != 0:
                break
        assert rc != 0 and "database space exceeded" in err
        page.open(srv.endpoint + "/ui/#server")
        page.wait(lambda: page.text("#stat-alarms") == "alarms NOSPACE", "the alarm in the bar")
        assert "alarm" in page.css("#stat-alarms").get_attribute("class")
        assert page.text("#alarms") == "NOSPACE on member 8e9e05c52164694d"
        page.screenshot("alarm")
    finally:
        srv.stop()


def test_with_auth_a_user_logs_in_and_sees_only_what_it_may_read(page: Browser, tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--unsafe-no-fsync", "--bcrypt-cost=4"]).start()
    try:
        for args in (["user", "add", "root:rootpw"], ["user", "grant-role", "root", "root"],
                     ["user", "add", "alice:alicepw"], ["role", "add", "app"],
                     ["role", "grant-permission", "app", "read", "/app/", "--prefix"],
                     ["role", "grant-permission", "app", "readwrite", "/shared"],
                     ["user", "grant-role", "alice", "app"],
                     ["put", "/app/a", "1"], ["put", "/app/b", "2"], ["put", "/secret/x", "hidden"],
                     ["put", "/shared", "s"], ["auth", "enable"]):
            ctl(srv, *args)
        page.open(srv.endpoint + "/ui")
        page.wait(lambda: page.css("#login").is_displayed(), "the login")
        assert not page.all("#tree .row")  # nothing before a login
        page.type("#login-user", "alice")
        page.type("#login-password", "wrong")
        page.click("#login-submit")
        page.wait(lambda: "authentication failed" in page.text("#login-error"), "the refusal")
        assert page.css("#login-password").get_attribute("value") == ""
        page.screenshot("login")
        page.type("#login-password", "alicepw")
        page.click("#login-submit")
        page.wait(lambda: not page.css("#login").is_displayed(), "the login is accepted")
        page.wait(lambda: key_row(page, "/app/a") and key_row(page, "/app/b") and key_row(page, "/shared"),
                  "alice's keys")
        assert page.text("#user-name") == "alice"
        ctl(srv, "put", "/app/c", "3", user="root:rootpw")
        page.wait(lambda: key_row(page, "/app/c"), "a put by another user appears (the watch runs as alice)")
        body = page.js("return document.body.innerText")
        assert "/secret" not in body and "hidden" not in body
        roots = [r.get_attribute("data-prefix") or r.get_attribute("data-key") for r in page.all("#tree > li > .row")]
        assert roots == ["/app/", "/shared"]  # a readable prefix, a readable key
        # the password is nowhere; the token only in the page's memory
        assert page.js("return [localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]
        assert "alicepw" not in page.driver.page_source
        page.screenshot("auth-limited")
        page.click("#logout")  # forgets the token: the login is asked again
        page.wait(lambda: page.css("#login").is_displayed(), "the login after logging out")
    finally:
        srv.stop()


def test_an_expired_token_asks_for_the_login_again(page: Browser, tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data",
                      args=["--unsafe-no-fsync", "--bcrypt-cost=4", "--auth-token-ttl=2"]).start()
    try:
        for args in (["user", "add", "root:rootpw"], ["user", "grant-role", "root", "root"], ["put", "/k", "v"],
                     ["auth", "enable"]):
            ctl(srv, *args)
        page.open(srv.endpoint + "/ui")
        page.type("#login-user", "root")
        page.type("#login-password", "rootpw")
        page.click("#login-submit")
        page.wait(lambda: key_row(page, "/k"), "root sees the keys")
        # idle for longer than --auth-token-ttl: the next status poll is refused, the login comes back
        page.wait(lambda: page.css("#login").is_displayed(), "the login after the token expired", timeout=12)
        assert "invalid auth token" in page.text("#login-reason")
        page.type("#login-password", "rootpw")
        page.click("#login-submit")
        page.wait(lambda: not page.css("#login").is_displayed(), "the new login")
        ctl(srv, "put", "/k2", "v", user="root:rootpw")
        page.wait(lambda: key_row(page, "/k2"), "the tree is live again")
    finally:
        srv.stop()


def test_100000_keys_first_page_costs_one_page(page: Browser, tmp_path: Path) -> None:
    """A directory of 100,000 keys: opening it reads one page of keys (keys_only, limit), not all
    of them, and "more" reads the next page only."""
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--unsafe-no-fsync", "--max-txn-ops=10000"]).start()
    try:
        kv = srv.stubs().kv
        for batch in range(10):
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"/bulk/k%06d" % i, value=b"v"))
                   for i in range(batch * 10_000, (batch + 1) * 10_000)]
            kv.Txn(pb.TxnRequest(success=ops), timeout=60)
        kv.Put(pb.PutRequest(key=b"/other/x", value=b"y"))
        page.open(srv.endpoint + "/ui")
        page.wait(lambda: page.text('.row.dir[data-prefix="/bulk/"] .count') == "100,000", "the tree shows /bulk/")
        assert page.text('.row.dir[data-prefix=""] .count') == "100,001"
        time.sleep(0.3)
        listed = [c for c in page.calls() if c["url"].endswith("/v3/kv/range") and '"keys_only":true' in (c["body"] or "")]
        # all keys -> "/" (its only entry, opened by itself) -> "bulk/", "other/": a few pages at most
        assert len(listed) <= 6 and sum(c["kvs"] for c in listed) <= 300, listed
        page.js("window.__calls.length = 0")
        page.click('.row.dir[data-prefix="/bulk/"]')
        page.wait(lambda: len(page.all('#tree .row.key[data-key^="/bulk/"]')) == 100, "the first page of /bulk/")
        time.sleep(0.3)  # let the recorder see the answers' sizes
        listed = [c for c in page.calls() if c["url"].endswith("/v3/kv/range") and '"keys_only":true' in (c["body"] or "")]
        assert len(listed) == 1 and listed[0]["kvs"] == 100, listed
        assert page.text("#tree li.more") == "show 100 more (100 shown)"
        page.screenshot("100k-first-page")
        page.js("window.__calls.length = 0")
        page.click("#tree li.more button")
        page.wait(lambda: len(page.all('#tree .row.key[data-key^="/bulk/"]')) == 200, "the second page")
        time.sleep(0.3)
        listed = [c for c in page.calls() if c["url"].endswith("/v3/kv/range")]
        assert len(listed) == 1 and listed[0]["kvs"] == 100, listed
        assert key_row(page, "/bulk/k000199") and not key_row(page, "/bulk/k000200")
    finally:
        srv.stop()
