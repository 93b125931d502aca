"""The chat page in headless Chromium: type, send, watch the reply stream in, stop, new chat."""

from __future__ import annotations

import shutil
import tempfile
import time

import httpx
import pytest

from chatsmith.chat_template import parse
from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None or shutil.which(DRIVER) is None,
        reason="Debian's chromium and chromium-driver are not installed",
    ),
]


@pytest.fixture(scope="module")
def page_server(tiny_run):
    app = create_app(load_run(tiny_run, "cpu"), ServeLimits(max_batch=2))
    engine = app.state.server.engine
    step, add = engine.step, engine.add
    prompts = []

    def slow_step():  # slow enough that streaming is visible, one token at a time
        time.sleep(0.04)
        return step()

    def recording_add(prompt, params):
        prompts.append(prompt)
        params.seed = 1234  # the page sends no seed: fix one so each run sees the same replies
        return add(prompt, params)

    engine.step, engine.add = slow_step, recording_add
    with LiveServer(app) as srv:
        srv.prompts = prompts
        yield srv


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chatsmith-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(cond, timeout=20.0, every=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting for the page")


def _send(browser, text):
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]


def test_chat_page_streams_stops_and_starts_over(page_server, browser):
    from selenium.webdriver.common.by import By

    browser.get(page_server.url + "/")
    assert "chatsmith" in browser.title
    browser.execute_script(
        "const t = document.getElementById('temperature'); t.value = '1';"
        "t.dispatchEvent(new Event('input'));"
    )
    assert _text(browser.find_element(By.ID, "temperature-value")) == "1"
    browser.execute_script("document.getElementById('max-tokens').value = '30';")

    reply = _send(browser, "Hi, how are you?")
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "Hi, how are you?"
    lengths = set()

    def done():
        lengths.add(len(_text(reply)))
        return reply.get_attribute("data-done") == "true"

    _wait(done)
    first = _text(reply)
    assert first and len([n for n in lengths if 0 < n < len(first)]) >= 2, lengths  # streamed

    # second turn: the page sends the whole conversation through the chat template
    second = _send(browser, "Tell me more.")
    _wait(lambda: second.get_attribute("data-done") == "true")
    turns = parse(_tokenizer(page_server), page_server.prompts[-1])
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"] == "Hi, how are you?" and turns[2]["content"] == "Tell me more."

    # a new chat empties the page; the next prompt holds one turn
    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []

    # stop mid-reply: the stream ends, the slot comes free, the page is ready again (in a new
    # chat, so the prompt stays well inside the tiny test model's 64-token context)
    browser.execute_script("document.getElementById('max-tokens').value = '60';")
    asked = len(page_server.prompts)
    third = _send(browser, "And then?")
    # the reply's bubble shows before the request reaches the engine: wait for its prompt
    _wait(lambda: len(page_server.prompts) > asked)
    assert len(parse(_tokenizer(page_server), page_server.prompts[-1])) == 1
    _wait(lambda: len(_text(third)) > 0)
    browser.find_element(By.ID, "stop").click()
    _wait(lambda: third.get_attribute("data-done") == "true")
    assert browser.find_element(By.ID, "send").is_enabled()
    _wait(lambda: httpx.get(page_server.url + "/health").json()["running"] == 0, timeout=2)

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    fresh = _send(browser, "Hello again")
    _wait(lambda: fresh.get_attribute("data-done") == "true")
    assert len(parse(_tokenizer(page_server), page_server.prompts[-1])) == 1  # a fresh chat


def _text(element) -> str:
    # textContent, not .text: a tiny model's greedy reply may be all newlines
    return element.get_attribute("textContent")


def _tokenizer(srv):
    return srv.server.config.app.state.server.tok
