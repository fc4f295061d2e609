"""The chat example in a real browser: Debian's Chromium, headless, driven by
Selenium through Debian's chromedriver (the same Chromium build, so the two
always match; Selenium is told both paths and never downloads anything).

The test starts the real broker binary on ephemeral loopback ports and the
real ``examples/chat/app.py`` against it, then drives independent browsers
(each its own Chromium with its own profile) the way people would: signing
in, joining and leaving rooms, talking in rooms and in private, a moderator
removing someone, and a broker restart the pages must survive by
reconnecting on their own. Every check reads what the page's DOM shows, with
a bounded wait; screenshots of every page are saved under
``target/chat-browser/``.

Needs: ``chromium`` and ``chromium-driver`` (Debian packages; ``.ci/test``
installs them), and ``selenium``, ``pytest`` and ``websockets`` from PyPI.
``CHROMIUM`` and ``CHROMEDRIVER`` override the executables' paths.

    python -m pytest examples/chat/test_browser.py

``CHAT_BROWSER=firefox`` runs the same test in Firefox (Debian's
``firefox-esr``) through geckodriver (``cargo install geckodriver``), found
on PATH or at ``FIREFOX`` and ``GECKODRIVER``; Firefox's driver has no
console log to check. CI runs Chromium.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar, cast

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
try:
    import pystrands
except ImportError:  # a checkout without the package installed: use its source
    if os.environ.get("PYSTRANDS_TEST_INSTALLED"):
        raise
    sys.path.insert(0, str(REPO / "python"))
    import pystrands

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.firefox.service import Service as FirefoxService
from selenium.webdriver.remote.webdriver import WebDriver
from websockets.sync.client import connect as ws_connect

#: The directory holding the package under test, for the app's PYTHONPATH.
PACKAGE_PARENT = str(Path(pystrands.__file__).resolve().parent.parent)
APP = HERE / "app.py"
SHOTS = REPO / "target" / "chat-browser"

#: Upper bound for anything the pages or the app must show.
TIMEOUT = 20.0
#: Upper bound for pages to be back online after the broker restarted: the
#: backend's and the pages' backoff (at most 15 s per wait) add up.
RECONNECT_TIMEOUT = 60.0

MODERATOR = "mod"
PASSWORD = "moderator-password-for-tests"

LISTENING = re.compile(r"listening websocket=\S*:(\d+) backend=\S*:(\d+)")
OPEN = re.compile(r"chat: open (http://\S+/)")

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = TIMEOUT,
             describe: Callable[[], str] = lambda: "") -> T:
    """Poll ``check`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}; {describe()}")
        time.sleep(0.05)


# ------------------------------------------------------------------ processes


class Process:
    """A child process whose output is collected line by line."""

    def __init__(self, name: str, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.lines: List[str] = []
        self.found: "queue.Queue[str]" = queue.Queue()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.found.put(line)

    def wait_line(self, pattern: "re.Pattern[str]") -> "re.Match[str]":
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.found.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{self.name} did not print {pattern.pattern!r} "
                                f"(exit status {self.proc.poll()}):\n{self.log}")
                continue
            match = pattern.search(line)
            if match:
                return match

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(TIMEOUT)

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-60:])


def package_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def broker_binary() -> str:
    """The broker the package under test runs (``python -m pystrands server-path``)."""
    out = subprocess.run([sys.executable, "-m", "pystrands", "server-path"], env=package_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
    if out.returncode != 0:
        pytest.fail(f"no broker executable: {out.stderr.decode(errors='replace')}")
    return out.stdout.decode().strip()


class Chat:
    """The real broker on ephemeral loopback ports and the chat app against it."""

    def __init__(self) -> None:
        self.binary = broker_binary()
        self.ws_port = self.tcp_port = 0
        self.broker: Optional[Process] = None
        self.brokers: List[Process] = []
        self.start_broker()
        self.app = Process("the chat app", [
            sys.executable, str(APP), "--broker-host", "127.0.0.1",
            "--broker-port", str(self.tcp_port), "--ws-port", str(self.ws_port),
            "--http-port", "0", "--moderator", MODERATOR, "--moderator-password", PASSWORD,
            "--secret", "a secret for the browser test",
        ], env=package_env())
        self.url = self.app.wait_line(OPEN).group(1)

    def start_broker(self) -> None:
        self.broker = Process("the broker", [
            self.binary, "--host", "127.0.0.1", "--ws-port", str(self.ws_port),
            "--tcp-port", str(self.tcp_port), "--admin-port", "0",
        ])
        self.brokers.append(self.broker)
        match = self.broker.wait_line(LISTENING)
        self.ws_port, self.tcp_port = int(match.group(1)), int(match.group(2))

    def stop_broker(self) -> None:
        assert self.broker is not None
        self.broker.stop()
        assert self.broker.proc.returncode == 0, self.broker.log

    def logs(self) -> str:
        broker = self.broker.log if self.broker else ""
        return f"\n--- app log:\n{self.app.log}\n--- broker log:\n{broker}"

    def close(self) -> None:
        self.app.stop()
        for broker in self.brokers:
            broker.stop()


@pytest.fixture(scope="module")
def chat() -> Iterator[Chat]:
    running = Chat()
    try:
        yield running
    finally:
        running.close()


# ------------------------------------------------------------------ browsers

BROWSER = os.environ.get("CHAT_BROWSER", "chromium")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
FIREFOX = os.environ.get("FIREFOX") or shutil.which("firefox-esr") or shutil.which("firefox") or ""
GECKODRIVER = os.environ.get("GECKODRIVER") or shutil.which("geckodriver") or ""

#: Everything the tests read off a page, in one round trip.
SNAPSHOT = """
const $ = (id) => document.getElementById(id);
const all = (css) => [...document.querySelectorAll(css)];
return {
  signedIn: !$("chat").hidden,
  signinError: $("signin-error").textContent,
  state: $("state").dataset.state,
  opens: Number($("state").dataset.opens),
  stateText: $("state-text").textContent,
  banner: $("banner").hidden ? "" : $("banner-text").textContent,
  title: $("conv-title").textContent,
  rooms: all("#rooms li").map((li) => li.dataset.room),
  dms: all("#dms li").map((li) => [li.dataset.peer, (li.querySelector(".badge") || {}).textContent || ""]),
  members: all("#members li").map((li) => li.dataset.member),
  composerEnabled: !$("composer-input").disabled,
  log: all("#log li").map((li) => li.classList.contains("msg")
    ? {kind: "msg", from: li.dataset.from, text: li.querySelector(".text").textContent,
       own: li.classList.contains("own"), pending: li.classList.contains("pending"),
       failed: li.classList.contains("failed")}
    : {kind: "notice", text: li.textContent}),
};
"""


class Page:
    """One browser tab of the chat."""

    def __init__(self, driver: "WebDriver", label: str, handle: str) -> None:
        self.driver = driver
        self.label = label
        self.handle = handle

    def _focus(self) -> None:
        if self.driver.current_window_handle != self.handle:
            self.driver.switch_to.window(self.handle)

    def snapshot(self) -> Dict[str, Any]:
        self._focus()
        result: Dict[str, Any] = self.driver.execute_script(SNAPSHOT)
        return result

    def wait(self, what: str, check: Callable[[Dict[str, Any]], Any],
             timeout: float = TIMEOUT) -> Dict[str, Any]:
        """Wait until ``check(snapshot)`` holds; the last snapshot on failure."""
        seen: List[Dict[str, Any]] = [{}]

        def probe() -> Any:
            seen[0] = self.snapshot()
            return seen[0] if check(seen[0]) else None

        return wait_for(f"{self.label}: {what}", probe, timeout,
                        lambda: "the page showed:\n" + json.dumps(seen[0], indent=1))

    def element(self, css: str) -> Any:
        self._focus()
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def type_into(self, css: str, text: str) -> None:
        field = self.element(css)
        field.clear()
        field.send_keys(text)

    def click(self, css: str) -> None:
        self.element(css).click()

    # what a person does

    def sign_in(self, url: str, name: str, password: str = "") -> None:
        self._focus()
        self.driver.get(url)
        self.wait("the sign-in form", lambda s: not s["signedIn"] and self.element("#signin-name").is_displayed())
        self.type_into("#signin-name", name)
        if password:
            self.type_into("#signin-password", password)
        self.click("#signin-submit")

    def open_conversation(self, key: str) -> None:
        kind, value = ("room", key[1:]) if key.startswith("#") else ("peer", key[1:])
        self.click(f'#{"rooms" if kind == "room" else "dms"} li[data-{kind}="{value}"] button')
        self.wait(f"{key} on screen", lambda s: s["title"] == (key if kind == "room" else f"private with {value}"))

    def join(self, room: str) -> None:
        self.type_into("#join-input", room)
        self.click("#join-form button")
        self.wait(f"#{room} joined and on screen", lambda s: room in s["rooms"] and s["title"] == f"#{room}")

    def say(self, text: str) -> None:
        self.wait("a usable composer", lambda s: s["composerEnabled"])
        self.type_into("#composer-input", text)
        self.click("#composer-send")

    def screenshot(self, path: Path) -> None:
        self._focus()
        self.driver.save_screenshot(str(path))


def messages(snapshot: Dict[str, Any]) -> List[Tuple[str, str]]:
    return [(e["from"], e["text"]) for e in snapshot["log"] if e["kind"] == "msg"]


def notices(snapshot: Dict[str, Any]) -> List[str]:
    return [e["text"] for e in snapshot["log"] if e["kind"] == "notice"]


def mine(snapshot: Dict[str, Any], text: str) -> List[Dict[str, Any]]:
    return [e for e in snapshot["log"] if e["kind"] == "msg" and e["text"] == text]


def delivered_once(snapshot: Dict[str, Any], text: str) -> bool:
    """The page shows its own message ``text`` exactly once, confirmed."""
    entries = mine(snapshot, text)
    return len(entries) == 1 and entries[0]["own"] and not entries[0]["pending"] and not entries[0]["failed"]


class Browsers:
    """Independent Chromium instances (each its own profile: own storage, own
    cookies), stopped at the end."""

    def __init__(self, profiles: Path) -> None:
        self.profiles = profiles
        self.drivers: List["WebDriver"] = []
        self.pages: List[Page] = []
        self.saved: List[Path] = []

    def open(self, label: str) -> Page:
        driver = self._firefox(label) if BROWSER == "firefox" else self._chromium(label)
        driver.set_page_load_timeout(TIMEOUT)
        driver.set_script_timeout(TIMEOUT)
        self.drivers.append(driver)
        page = Page(driver, label, driver.current_window_handle)
        self.pages.append(page)
        return page

    def _chromium(self, label: str) -> WebDriver:
        for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
            if not os.access(path, os.X_OK):
                pytest.fail(f"{what} not found at {path}: install Debian's chromium and "
                            "chromium-driver (apt-get install chromium chromium-driver), or set "
                            "CHROMIUM and CHROMEDRIVER")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            # no traffic of Chromium's own: this machine reaches nothing but loopback
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-extensions", "--no-default-browser-check",
            f"--user-data-dir={self.profiles / label}", "--window-size=1100,720",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: Selenium Manager (which could download one) is not used.
        service = ChromeService(executable_path=CHROMEDRIVER,
                                log_output=str(SHOTS / f"chromedriver-{label}.log"))
        try:
            return webdriver.Chrome(options=options, service=service)
        except WebDriverException as exc:
            pytest.fail(f"cannot start Chromium {CHROMIUM} with {CHROMEDRIVER}: {exc}")

    def _firefox(self, label: str) -> WebDriver:
        for path, what in ((FIREFOX, "Firefox"), (GECKODRIVER, "geckodriver")):
            if not path or not os.access(path, os.X_OK):
                pytest.fail(f"{what} not found (set FIREFOX and GECKODRIVER)")
        options = webdriver.FirefoxOptions()
        options.binary_location = FIREFOX
        for flag in ("-headless", "--width=1100", "--height=720"):
            options.add_argument(flag)
        # no traffic of Firefox's own: this machine reaches nothing but loopback
        for pref, value in (("app.update.enabled", False), ("browser.safebrowsing.update.enabled", False),
                            ("datareporting.policy.dataSubmissionEnabled", False),
                            ("network.captive-portal-service.enabled", False),
                            ("network.connectivity-service.enabled", False),
                            ("extensions.update.enabled", False)):
            options.set_preference(pref, value)
        service = FirefoxService(executable_path=GECKODRIVER,
                                 log_output=str(SHOTS / f"geckodriver-{label}.log"))
        try:
            return webdriver.Firefox(options=options, service=service)
        except WebDriverException as exc:
            pytest.fail(f"cannot start Firefox {FIREFOX} with {GECKODRIVER}: {exc}")

    def new_tab(self, page: Page, label: str) -> Page:
        """A second tab of the same browser (same profile, so the same sign-in)."""
        page.driver.switch_to.new_window("tab")
        tab = Page(page.driver, label, page.driver.current_window_handle)
        self.pages.append(tab)
        return tab

    def screenshot(self, page: Page, name: str) -> None:
        path = SHOTS / f"{name}.png"
        try:
            page.screenshot(path)
        except WebDriverException:
            return
        self.saved.append(path)

    def console_errors(self, *expected: str) -> List[str]:
        """Errors in the pages' consoles (uncaught exceptions, refused loads,
        Content-Security-Policy violations) since the last call, but those
        containing one of ``expected`` and the failed WebSocket connections a
        reconnecting page is expected to log."""
        errors: List[str] = []
        if BROWSER == "firefox":
            return errors  # geckodriver offers no console log
        for driver in self.drivers:
            chrome = cast(webdriver.Chrome, driver)
            log: List[Dict[str, Any]] = chrome.get_log("browser")  # type: ignore[no-untyped-call]
            for entry in log:
                text = entry.get("message", "")
                if entry.get("level") != "SEVERE" or "WebSocket connection to" in text:
                    continue
                if not any(e in text for e in expected):
                    errors.append(text)
        return errors

    def quit(self) -> None:
        for driver in self.drivers:
            try:
                driver.quit()
            except WebDriverException:
                pass


@pytest.fixture
def browsers(tmp_path: Path, request: pytest.FixtureRequest,
             capsys: pytest.CaptureFixture[str]) -> Iterator[Browsers]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    opened = Browsers(tmp_path)
    try:
        yield opened
    finally:
        for page in opened.pages:
            opened.screenshot(page, f"{BROWSER}-{request.node.name}-{page.label}")
        opened.quit()
        with capsys.disabled():
            print()
            for path in opened.saved:
                print(f"screenshot: {path.relative_to(REPO)}")


# ------------------------------------------------------------------ tests


def login(chat: Chat, name: str, password: str = "") -> Dict[str, Any]:
    request = urllib.request.Request(
        chat.url + "login", data=json.dumps({"name": name, "password": password}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        reply: Dict[str, Any] = json.loads(response.read())
    return reply


def refusal(url: str) -> Tuple[int, str]:
    """Status and body of a refused upgrade; retried while no backend is
    connected yet (503)."""
    def attempt() -> Optional[Tuple[int, str]]:
        try:
            with ws_connect(url, open_timeout=TIMEOUT):
                pytest.fail(f"{url} was accepted")
        except Exception as exc:
            response = getattr(exc, "response", None)
            if response is None:
                raise
            if response.status_code == 503:
                return None
            return response.status_code, response.body.decode("utf-8", "replace")
        return None

    return wait_for(f"an answer from the backend to {url}", attempt)


def test_the_backend_refuses_bad_tokens_with_401_and_a_reason(chat: Chat) -> None:
    ws = f"ws://127.0.0.1:{chat.ws_port}/chat"
    assert refusal(ws) == (401, "missing token: sign in first")
    good = login(chat, "ann")["token"]
    payload, _, signature = good.partition(".")
    forged = login(chat, "eve")["token"].partition(".")[0] + "." + signature
    assert refusal(f"{ws}?token={forged}") == (401, "bad token signature: sign in again")
    assert refusal(f"{ws}?token={payload}") == (401, "malformed token")
    with ws_connect(f"{ws}?token={good}", open_timeout=TIMEOUT) as conn:
        welcome = json.loads(conn.recv(timeout=TIMEOUT))
    assert welcome["type"] == "welcome" and welcome["name"] == "ann" and welcome["rooms"] == ["lobby"]


def test_the_page_signs_out_on_a_bad_token_and_checks_the_password(chat: Chat, browsers: Browsers) -> None:
    page = browsers.open("eve")
    page.sign_in(chat.url, MODERATOR, "not the password")
    page.wait("the password refused", lambda s: s["signinError"] == f"wrong password for {MODERATOR}"
              and not s["signedIn"])
    # A token this app did not sign (an old one, say), found in storage at load.
    good = login(chat, "eve")
    forged = dict(good, token=good["token"][:-4] + "AAAA")
    page.driver.execute_script("localStorage.setItem('pystrands-chat', arguments[0])", json.dumps(forged))
    page.driver.get(chat.url)
    page.wait("back at sign-in with the reason",
              lambda s: not s["signedIn"] and s["signinError"] == "bad token signature: sign in again")
    refused = "the server responded with a status of 401"
    assert browsers.console_errors(f"/login - Failed to load resource: {refused}",
                                   f"/session - Failed to load resource: {refused}") == []


def test_chat_in_the_browser(chat: Chat, browsers: Browsers) -> None:
    describe = chat.logs

    # Three people sign in, one after the other; everyone lands in the lobby.
    ann = browsers.open("ann")
    ann.sign_in(chat.url, "ann")
    ann.wait("online in the lobby", lambda s: s["state"] == "online" and s["rooms"] == ["lobby"]
             and s["members"] == ["ann"])
    bob = browsers.open("bob")
    bob.sign_in(chat.url, "bob")
    bob.wait("online", lambda s: s["state"] == "online" and s["title"] == "#lobby")
    mod = browsers.open("mod")
    mod.sign_in(chat.url, MODERATOR, PASSWORD)
    mod.wait("online", lambda s: s["state"] == "online")
    for page in (ann, bob, mod):
        page.wait("all three in the lobby's member list",
                  lambda s: sorted(s["members"]) == ["ann", "bob", MODERATOR])
    ann.wait("'bob joined' and 'mod joined' notices",
             lambda s: notices(s) == ["You joined #lobby", "bob joined", f"{MODERATOR} joined"])

    # Rooms: ann and bob join #dev; the member lists follow.
    ann.join("dev")
    ann.wait("alone in #dev", lambda s: s["members"] == ["ann"] and s["rooms"] == ["lobby", "dev"])
    bob.join("dev")
    ann.wait("bob in #dev", lambda s: s["members"] == ["ann", "bob"] and "bob joined" in notices(s))

    # A room message: everyone else in the room gets it; the sender's tab shows
    # it once, confirmed; someone outside the room never sees it.
    bob.say("hello dev")
    ann.wait("bob's message in #dev", lambda s: ("bob", "hello dev") in messages(s))
    bob.wait("its own message once, delivered", lambda s: delivered_once(s, "hello dev"))
    ann.open_conversation("#lobby")
    ann.say("hello lobby")
    mod.wait("ann's lobby message", lambda s: ("ann", "hello lobby") in messages(s))
    assert mod.snapshot()["rooms"] == ["lobby"]
    assert not any(mine(mod.snapshot(), "hello dev")), "a message of #dev reached someone outside it"
    ann.wait("its own lobby message once, delivered", lambda s: delivered_once(s, "hello lobby"))

    # A second tab of ann: signed in already, same rooms, announced to nobody.
    ann2 = browsers.new_tab(ann, "ann-tab2")
    ann2.driver.get(chat.url)
    ann2.wait("online with ann's rooms", lambda s: s["state"] == "online" and s["rooms"] == ["lobby", "dev"]
              and sorted(s["members"]) == ["ann", "bob", MODERATOR])
    ann2.say("second tab here")
    bob.open_conversation("#lobby")
    bob.wait("the second tab's message", lambda s: ("ann", "second tab here") in messages(s))
    # bob came after ann: any "ann joined" would be the second tab's.
    assert "ann joined" not in notices(bob.snapshot()), "a second tab was announced as a new member"
    ann.wait("the other tab's message as its own", lambda s: any(
        e["own"] for e in mine(s, "second tab here")))

    # Private messages: every tab of the recipient gets them, nobody else.
    mod.click('#members li[data-member="ann"] button[data-action="dm"]')
    mod.wait("the conversation with ann", lambda s: s["title"] == "private with ann")
    mod.say("psst, ann")
    for tab in (ann, ann2):
        tab.wait("an unread private message from mod", lambda s: [MODERATOR, "1"] in s["dms"])
        tab.open_conversation(f"@{MODERATOR}")
        tab.wait("mod's private message", lambda s: messages(s) == [(MODERATOR, "psst, ann")])
    mod.wait("its private message once, delivered", lambda s: delivered_once(s, "psst, ann"))
    ann2.say("hi mod")
    mod.wait("ann's answer", lambda s: (("ann", "hi mod") in messages(s)))
    ann.wait("the answer from the other tab as its own", lambda s: any(e["own"] for e in mine(s, "hi mod")))
    assert bob.snapshot()["dms"] == [], "a private message reached a third person"

    # Leaving: bob leaves #dev; ann sees it.
    bob.open_conversation("#dev")
    bob.click("#leave")
    bob.wait("out of #dev", lambda s: s["rooms"] == ["lobby"] and s["title"] == "#lobby")
    ann.open_conversation("#dev")
    ann.wait("bob gone from #dev", lambda s: s["members"] == ["ann"] and "bob left" in notices(s))

    # The moderator removes bob, with a reason bob's page shows.
    mod.open_conversation("#lobby")
    mod.click('#members li[data-member="bob"] button[data-action="kick"]')
    mod.type_into("#kick-reason", "spamming the lobby")
    mod.click("#kick-submit")
    bob.wait("removed, with the reason", lambda s: s["state"] == "removed"
             and s["banner"] == f"You were removed from the chat: removed by {MODERATOR}: spamming the lobby"
             and not s["composerEnabled"])
    ann.open_conversation("#lobby")
    ann.wait("bob gone from the lobby", lambda s: sorted(s["members"]) == ["ann", MODERATOR]
             and f"bob was removed by {MODERATOR}: spamming the lobby" in notices(s)
             and "bob left" in notices(s))
    bob_opens = bob.snapshot()["opens"]

    # The broker restarts: the pages show it, reconnect by themselves, get
    # their rooms back and chat on.
    online = [ann, ann2, mod]
    opens = {page.label: page.snapshot()["opens"] for page in online}
    chat.stop_broker()
    for page in online:
        page.wait("the lost connection shown", lambda s: s["state"] == "reconnecting"
                  and not s["composerEnabled"])
    browsers.screenshot(ann, f"{BROWSER}-broker-down-ann")
    chat.start_broker()
    for page in online:
        page.wait("back online on a new connection",
                  lambda s: s["state"] == "online" and s["opens"] == opens[page.label] + 1,
                  timeout=RECONNECT_TIMEOUT)
    assert any("reconnected to the broker" in line for line in chat.app.lines), describe()
    ann.wait("its rooms back, bob still out", lambda s: s["rooms"] == ["lobby", "dev"]
             and sorted(s["members"]) == ["ann", MODERATOR])
    ann.say("back after the restart")
    mod.open_conversation("#lobby")
    mod.wait("ann's message after the restart", lambda s: ("ann", "back after the restart") in messages(s))
    ann.wait("its message delivered", lambda s: delivered_once(s, "back after the restart"))
    ann2.open_conversation("#lobby")
    ann2.wait("the message of the other tab", lambda s: any(e["own"] for e in mine(s, "back after the restart")))
    mod.open_conversation("@ann")
    mod.say("welcome back")
    ann2.open_conversation(f"@{MODERATOR}")
    ann2.wait("mod's private message after the restart", lambda s: (MODERATOR, "welcome back") in messages(s))

    mod.open_conversation("#lobby")
    mod.say("good to have you back")
    ann.open_conversation("#lobby")
    ann.wait("mod's message after the restart", lambda s: (MODERATOR, "good to have you back") in messages(s))

    # A removed page does not come back by itself.
    final = bob.snapshot()
    assert final["state"] == "removed" and final["opens"] == bob_opens, final
    assert browsers.console_errors() == []
    assert "Traceback" not in "\n".join(chat.app.lines), describe()
