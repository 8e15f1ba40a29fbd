"""The web chat in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by selenium, against the real gateway over real HTTP, the real dev server and workers, and
the fake model over HTTP streaming its answer one word at a time.

The user signs in with an API key, sends a message, watches the answer grow token by token before
the turn's answer arrives, loses the connection mid-answer (the browser reaches the gateway through
a small TCP relay that the test cuts) and gets the rest of the answer from where it was
(`Last-Event-ID`), sees the tool cards with their service badges (IT, Finance) turn ok, reloads
the page and finds the conversation, with its answer, in the history; continues it, reloads in the
middle of the next turn and sees that turn through; signs out.

A second test takes a call that needs a person's approval through the page: the approval card
with its Approve button, the decision, and the call that then runs.

`WEB_CHAT_SCREENSHOT=docs/web-chat.png` also saves a screenshot of the page mid-conversation
(the README's picture).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from orchestrator.worker import build_orchestrator_worker
from tests.conftest import (
    CANARY_ENDPOINT,
    STORE_URL,
    Stack,
    fake_llm_settings,
    orchestrator_settings,
)
from tests.support.canary import ACCESS_APPROVERS
from tests.support.fake_llm import FakeModelServer, completion
from tests.support.gateway import GatewayServer, dev_server_address, gateway_fixture  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_SECONDS = 60.0  # generous: two cores are shared with the dev server and workers
POLL_SECONDS = 0.05

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (`make system-deps` installs them)",
)

QUESTION = "What is my IP address, and what do 1000 EUR at 5% a year become in 10 years?"
# Two calls in one step, on two teams' services: IT's get_ip and Finance's calculate_roi.
TOOL_CALLS = [("get_ip", {}), ("calculate_roi", {"principal": 1000, "rate": 5, "years": 10})]
TOOLS = sorted([("calculate_roi", "finance"), ("get_ip", "it")])
ANSWER = (
    "1000 EUR at 5% a year, compounded yearly, become 1628.89 EUR after 10 years: a profit of "
    "628.89 EUR, as the Finance service computed it exactly. Your host name and addresses came "
    "from the IT service just now, and nothing about them looks unusual, so there is no need to "
    "open a ticket. Ask me again any time and I will look both up once more and tell you what "
    "changed."
)
FOLLOW_UP = "And in 20 years?"
FOLLOW_UP_CALL = ("calculate_roi", {"principal": 1000, "rate": 5, "years": 20})
FOLLOW_UP_ANSWER = (
    "After 20 years at the same 5% a year, the 1000 EUR would be about 2653.30 EUR, more than "
    "two and a half times what you put in; the second decade adds more than the first, because "
    "each year's interest earns interest of its own from then on."
)


class Relay:
    """A TCP relay on 127.0.0.1 in front of the gateway: `cut()` drops every connection through
    it at once (a network drop, as the browser sees it); new connections go through again."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.sent = bytearray()  # everything the browser sent (request heads and bodies)
        self.cuts = 0
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._sockets += [client, upstream]
            for source, target, record in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, target, record), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self.cuts += 1
        for end in sockets:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@contextmanager
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,820",
    ):
        options.add_argument(argument)
    if CHROMIUM:
        options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# What the page shows, read in one script so that a text and its state are seen together.
STREAMING_TEXT = """
const node = document.querySelector('[data-testid=assistant-text][data-state=streaming]');
return node && node.textContent ? node.textContent : null;
"""


def css(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def first_of(selector: str) -> Callable[[WebDriver], WebElement | None]:
    """A wait condition: the first element matching `selector`, once there is one."""
    return lambda driver: next(iter(css(driver, selector)), None)


def tool_cards(driver: WebDriver) -> list[tuple[str, str, str]]:
    """(tool, service badge, status) of every tool card shown, sorted."""
    return sorted(
        (
            card.find_element(By.CSS_SELECTOR, "[data-testid=tool-name]").text,
            card.find_element(By.CSS_SELECTOR, "[data-testid=tool-service]").text,
            card.find_element(By.CSS_SELECTOR, "[data-testid=tool-status]").text,
        )
        for card in css(driver, "[data-testid=tool-card]")
    )


def sign_in(driver: WebDriver, wait: WebDriverWait[WebDriver], url: str, key: str) -> None:
    driver.get(url + "/")
    field = wait.until(first_of("[data-testid=api-key]"))
    field.send_keys(key)
    css(driver, "[data-testid=sign-in]")[0].click()
    wait.until(lambda d: css(d, "[data-testid=app]")[0].is_displayed())


def send(driver: WebDriver, text: str) -> None:
    css(driver, "[data-testid=message-input]")[0].send_keys(text)
    css(driver, "[data-testid=send]")[0].click()


def chat_in_browser(relay: Relay, key: str, user: str, screenshot: str | None) -> None:
    """The whole scenario, blocking (run in a thread: the session's workers need the loop)."""
    url = relay.url
    with browser() as driver:
        wait = WebDriverWait(driver, WAIT_SECONDS, poll_frequency=POLL_SECONDS)
        # Sign in once: the key is asked for, then kept.
        sign_in(driver, wait, url, key)
        assert css(driver, "[data-testid=whoami]")[0].text.endswith(user)

        # Send a message; the answer grows token by token before the turn's answer arrives.
        send(driver, QUESTION)
        first = wait.until(lambda d: d.execute_script(STREAMING_TEXT))
        grown = wait.until(
            lambda d: (text := d.execute_script(STREAMING_TEXT)) and len(text) > len(first) and text
        )
        assert first and ANSWER.startswith(first) and len(first) < len(ANSWER)
        assert ANSWER.startswith(grown) and len(first) < len(grown) < len(ANSWER)

        # The connection drops mid-answer; the page resumes from the last event id it saw.
        relay.cut()
        answer = wait.until(first_of("[data-testid=assistant-text][data-state=answer]"))
        assert answer.text == ANSWER.strip()
        # Several token events reached the page before the answer event ended the turn, and
        # they were the whole answer, in order: nothing lost or repeated across the drop.
        assert int(answer.get_attribute("data-tokens")) > 1
        assert answer.get_attribute("data-streamed") == "whole"
        resumed = bytes(relay.sent).lower()
        assert b"/events http/1.1" in resumed and b"last-event-id: " in resumed

        # The tool cards: each tool, its team's badge, and its status, now ok.
        wait.until(lambda d: len(css(d, "[data-testid=tool-card][data-status=ok]")) == 2)
        assert tool_cards(driver) == [(tool, service, "ok") for tool, service in TOOLS]
        assert [e.text for e in css(driver, "[data-testid=user-message]")] == [QUESTION]
        assert not css(driver, "[data-testid=turn-error]")
        wait.until(lambda d: css(d, "[data-testid=send]")[0].is_enabled())

        # The conversation is in the sidebar, marked as the open one.
        item = wait.until(first_of("[data-testid=conversation-item][aria-current]"))
        conversation_id = item.get_attribute("data-conversation-id")
        assert conversation_id and item.text.startswith(QUESTION)
        if screenshot:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(screenshot)

        # Reload: still signed in; the conversation is in the history, with its answer.
        driver.refresh()
        selector = f"[data-testid=conversation-item][data-conversation-id='{conversation_id}']"
        wait.until(lambda d: css(d, selector))
        css(driver, "[data-testid=new-conversation]")[0].click()
        wait.until(lambda d: not css(d, "[data-testid=turn]"))
        css(driver, selector)[0].click()
        answer = wait.until(first_of("[data-testid=assistant-text][data-state=answer]"))
        assert answer.text == ANSWER.strip()
        assert [e.text for e in css(driver, "[data-testid=user-message]")] == [QUESTION]
        assert tool_cards(driver) == [(tool, service, "ok") for tool, service in TOOLS]
        assert css(driver, "[data-testid=chat-title]")[0].text == QUESTION

        # The conversation goes on; after a reload in the middle of the next answer, the page
        # shows the turn that was running, and its answer once it is there (live when the
        # gateway answers while the model step runs, else from the history).
        send(driver, FOLLOW_UP)
        wait.until(lambda d: d.execute_script(STREAMING_TEXT))
        driver.refresh()
        wait.until(lambda d: len(css(d, "[data-testid=assistant-text][data-state=answer]")) == 2)
        answers = css(driver, "[data-testid=assistant-text][data-state=answer]")
        assert [a.text for a in answers] == [ANSWER, FOLLOW_UP_ANSWER]
        assert [e.text for e in css(driver, "[data-testid=user-message]")] == [QUESTION, FOLLOW_UP]
        both_turns = [*TOOLS, ("calculate_roi", "finance")]
        assert tool_cards(driver) == sorted((tool, service, "ok") for tool, service in both_turns)
        assert answers[1].get_attribute("data-streamed") in (None, "whole")  # never "partial"

        # Signing out forgets the key.
        css(driver, "[data-testid=sign-out]")[0].click()
        wait.until(lambda d: css(d, "[data-testid=login]")[0].is_displayed())
        assert driver.execute_script("return Object.keys(localStorage).length") == 0


async def test_web_chat_streams_tool_cards_and_history(
    gateway: GatewayServer,
    fake_model: FakeModelServer,
) -> None:
    user = f"alice-{uuid.uuid4().hex[:6]}"
    key = gateway.create_key(user, "web chat test")
    fake_model.script(
        completion(tool_calls=TOOL_CALLS),
        completion(ANSWER, stream_delay=0.05),
        completion(tool_calls=[FOLLOW_UP_CALL]),
        completion(FOLLOW_UP_ANSWER, stream_delay=0.1),
    )
    screenshot = os.environ.get("WEB_CHAT_SCREENSHOT") or None
    relay = Relay(gateway.port)
    try:
        await asyncio.to_thread(chat_in_browser, relay, key, user, screenshot)
    finally:
        relay.close()

    # The model was asked to stream, and the page's message reached the workflow once.
    sent = fake_model.chat_requests()
    assert len(sent) == 4 and all(request.get("stream") for request in sent)
    assert [m["content"] for m in sent[0]["messages"] if m["role"] == "user"] == [QUESTION]


APPROVER = ACCESS_APPROVERS[0]
GRANT = {"user": "ada", "system": "vpn", "days": 90}
GRANTED = "Ada has VPN access for 90 days."


def approve_in_browser(url: str, key: str) -> None:
    with browser() as driver:
        wait = WebDriverWait(driver, WAIT_SECONDS, poll_frequency=POLL_SECONDS)
        sign_in(driver, wait, url, key)
        send(driver, "Give ada VPN access for 90 days")

        # The call waits for a person: its card names the tool, its team and why.
        card = wait.until(first_of("[data-testid=approval-card][data-state=pending]"))
        assert "grant_access" in card.text and "days > 30" in card.text
        assert card.find_element(By.CSS_SELECTOR, "[data-testid=tool-service]").text == "it"
        assert not css(driver, "[data-testid=tool-card]")  # it has not run
        card.find_element(By.CSS_SELECTOR, "[data-testid=approval-approve]").click()

        # Approved by the signed-in user (the gateway's approver); then the call runs.
        wait.until(first_of("[data-testid=approval-card][data-state=approve]"))
        wait.until(
            lambda d: f"Approved by {APPROVER}" in css(d, "[data-testid=approval-outcome]")[0].text
        )
        assert not css(driver, "[data-testid=approval-approve]")
        answer = wait.until(first_of("[data-testid=assistant-text][data-state=answer]"))
        assert answer.text == GRANTED
        assert tool_cards(driver) == [("grant_access", "it", "ok")]


async def test_web_chat_approval_card_lets_the_call_run(
    stack: Stack, fake_model: FakeModelServer
) -> None:
    # An orchestrator that discovers the canary IT deployment, whose grant_access needs the IT
    # lead's approval beyond 30 days; a gateway in front of it; the IT lead signed in.
    task_queue = f"orchestrator-web-{uuid.uuid4().hex[:8]}"
    worker = build_orchestrator_worker(
        stack.client("orchestrator"),
        task_queue=task_queue,
        settings=orchestrator_settings(tool_endpoints=[CANARY_ENDPOINT]),
        llm_settings=fake_llm_settings(fake_model),
    )
    fake_model.script(
        completion(tool_calls=[("grant_access", GRANT)]),
        completion(GRANTED, stream_delay=0.02),
    )
    server = GatewayServer(
        temporal_address=dev_server_address(stack), task_queue=task_queue, store_url=STORE_URL
    )
    async with worker:
        await asyncio.to_thread(server.start)
        try:
            key = server.create_key(APPROVER, "web chat approval test")
            await asyncio.to_thread(approve_in_browser, server.url, key)
        finally:
            await asyncio.to_thread(server.stop)
