"""The page at ``GET /`` (serve/page.html) in a real headless Chromium, driven by Playwright, against a real
``fcvc serve`` subprocess: the captions it shows are the ones :class:`Captioner` computes in this process.

Debian's Chromium is used (``/usr/bin/chromium``, or ``chromium`` on PATH): ``nox -s tests`` installs it
(``.ci/install-browser.sh``), or ``apt-get install chromium``. Without it these tests skip, saying so.
``FCVC_SCREENSHOT_TO=docs/img/serve-page.png`` also saves the first test's full-page screenshot there.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fcvc_pipeline import Captioner
from tests.serve.server import Server

pytestmark = pytest.mark.timeout(300)

TOKEN = "sekrit-token-123"
WAIT_MS = 60_000  # one upload on this tiny model takes well under a second; a loaded CI machine, longer
NOT_A_VIDEO = b"this is a text file, not a video\n"


def chromium_executable() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Browser:
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium for the page tests: install Debian's with `apt-get install chromium` "
                    "(nox -s tests runs .ci/install-browser.sh, which does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def servers(tiny_captioner) -> dict[str, Server]:
    """One plain server and one with ``--token``, started side by side (each takes seconds to get ready)."""
    model, _ = tiny_captioner
    with ThreadPoolExecutor(max_workers=2) as pool:
        starting = {"plain": pool.submit(Server, model), "token": pool.submit(Server, model, "--token", TOKEN)}
    started = {name: f.result() for name, f in starting.items() if f.exception() is None}
    try:
        for f in starting.values():
            f.result()  # raises the first failure to start, with that server's stderr
        yield started
    finally:
        for s in started.values():
            s.proc.terminate()  # both shut down at once
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers["plain"]


@pytest.fixture(scope="module")
def token_server(servers) -> Server:
    return servers["token"]


@pytest.fixture(scope="module")
def expected(tiny_captioner) -> dict[str, str]:
    """Each sample video's caption, computed here (not by the server), one video per call."""
    model, videos = tiny_captioner
    captioner = Captioner.load(model, device="cpu")
    out = {}
    for video in videos[:4]:
        caption = captioner.caption([video])[0]
        assert caption.ok, caption.error
        out[video.name] = caption.text
    assert len(set(out.values())) > 1, "the sample videos should not all get one caption"
    return out


def open_page(browser: Browser, url: str, **context_options):
    """A fresh context (its own sessionStorage) on the page; JavaScript exceptions are collected."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    return context, page, errors


@pytest.fixture
def page(browser, server):
    context, page, errors = open_page(browser, server.url)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def send(page: Page, path: Path) -> None:
    """Pick ``path`` and press Caption; return once the answer is shown (the button is usable again)."""
    page.set_input_files("#file", str(path))
    expect(page.locator("#go")).to_be_enabled()
    page.click("#go")
    expect(page.locator("#status")).not_to_have_text(re.compile(r"^$|Uploading|Captioning"))
    expect(page.locator("#go")).to_be_enabled()


def figure_loaded(page: Page, selector: str = "#latest .result img") -> dict:
    """Wait for the result's attention figure to be decoded; its natural and shown sizes."""
    img = page.locator(selector)
    expect(img).to_have_count(1)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    return img.evaluate("img => ({natural: img.naturalWidth, shown: img.getBoundingClientRect().width,"
                        " right: img.getBoundingClientRect().right})")


def bad_video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(NOT_A_VIDEO)
    return path


def test_caption_and_figure(page, server, tiny_captioner, expected, tmp_path):
    model, videos = tiny_captioner
    expect(page.locator("#model")).to_contain_text(model.name)
    expect(page.locator("#token-row")).to_be_hidden()  # no --token: no token field
    expect(page.locator("#history-section")).to_contain_text("Nothing yet in this session", use_inner_text=True)
    send(page, videos[0])
    expect(page.locator("#status")).to_have_text("Done.")
    result = page.locator("#latest .result")
    expect(result).to_have_count(1)
    expect(result.locator(".name")).to_have_text(videos[0].name)
    expect(result.locator(".caption")).to_have_text(expected[videos[0].name])
    expect(result.locator(".failed")).to_have_count(0)
    size = figure_loaded(page)
    assert size["natural"] > 0 and size["shown"] > 0
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FCVC_SCREENSHOT_TO"):
        target = Path(os.environ["FCVC_SCREENSHOT_TO"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_second_upload_moves_the_first_into_history(page, tiny_captioner, expected):
    _, videos = tiny_captioner
    first, second = videos[1], videos[2]
    send(page, first)
    expect(page.locator("#latest .result .caption")).to_have_text(expected[first.name])
    send(page, second)
    expect(page.locator("#latest .result")).to_have_count(1)
    expect(page.locator("#latest .result .name")).to_have_text(second.name)
    expect(page.locator("#latest .result .caption")).to_have_text(expected[second.name])
    earlier = page.locator("#history .result")
    expect(earlier).to_have_count(1)
    expect(earlier.locator(".name")).to_have_text(first.name)
    expect(earlier.locator(".caption")).to_have_text(expected[first.name])
    expect(page.locator("#history-section")).not_to_contain_text("Nothing yet", use_inner_text=True)


def test_bad_file_is_an_error_and_the_page_stays_usable(page, server, tiny_captioner, expected, tmp_path):
    _, videos = tiny_captioner
    status, body = server.post_videos([("clip.mp4", NOT_A_VIDEO)])
    assert status == 422
    reason = body["videos"][0]["error"]
    assert reason
    send(page, bad_video(tmp_path))
    failed = page.locator("#latest .result .failed")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Not captioned")
    expect(failed).to_contain_text(reason)  # the decoder's own words
    expect(page.locator("#latest .result .caption")).to_have_count(0)
    expect(page.locator("#latest .result img")).to_have_count(0)
    expect(page.locator("#status")).to_contain_text(body["error"])
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    send(page, videos[3])  # still usable
    expect(page.locator("#status")).to_have_text("Done.")
    expect(page.locator("#status")).not_to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#latest .result .caption")).to_have_text(expected[videos[3].name])
    figure_loaded(page)
    expect(page.locator("#history .result .failed")).to_contain_text(reason)


def test_phone_width_has_no_horizontal_scrolling(browser, server, tiny_captioner, expected):
    _, videos = tiny_captioner
    context, page, errors = open_page(browser, server.url, viewport={"width": 375, "height": 740},
                                      device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        send(page, videos[0])
        expect(page.locator("#latest .result .caption")).to_have_text(expected[videos[0].name])
        size = figure_loaded(page)
        width = page.evaluate("document.documentElement.clientWidth")
        assert width <= 375
        assert size["natural"] > width, "the figure should be wider than a phone, or this proves nothing"
        assert size["shown"] <= width and size["right"] <= width, size
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= 375 + 1, f"the page scrolls sideways at 375 px: {scroll} px wide"
        assert not errors, errors
    finally:
        context.close()


def test_states_are_text_not_only_colour(page, tiny_captioner, tmp_path):
    """With forced colours (Windows high contrast), and for screen readers: each state is said in words,
    in the DOM (textContent, not CSS ::before, which neither reliably conveys)."""
    _, videos = tiny_captioner
    page.emulate_media(forced_colors="active")
    assert page.evaluate("matchMedia('(forced-colors: active)').matches")
    assert "Nothing yet in this session" in page.locator("#history-section").inner_text()
    send(page, bad_video(tmp_path))
    status = page.locator("#status")
    expect(status).to_be_visible()
    assert status.text_content().startswith("Error: "), status.text_content()
    failed = page.locator("#latest .result .failed")
    expect(failed).to_be_visible()
    assert failed.text_content().startswith("Not captioned: "), failed.text_content()
    send(page, videos[0])
    assert status.text_content() == "Done."
    expect(page.locator("#latest .result .caption")).to_be_visible()


def test_token_server(browser, token_server, tiny_captioner, expected):
    model, videos = tiny_captioner
    context, page, errors = open_page(browser, token_server.url)
    try:
        expect(page.locator("#token-row")).to_be_visible()
        expect(page.locator("#model")).to_contain_text("needs a token")
        send(page, videos[1])
        expect(page.locator("#status")).to_contain_text("needs a token")
        expect(page.locator("#latest .result")).to_have_count(0)
        page.fill("#token", TOKEN)
        send(page, videos[1])
        expect(page.locator("#status")).to_have_text("Done.")
        expect(page.locator("#latest .result .caption")).to_have_text(expected[videos[1].name])
        figure_loaded(page)  # fetched with the Authorization header: a plain <img src> would get 401
        expect(page.locator("#model")).to_contain_text(model.name)  # the model line is fetched again with it
        assert not errors, errors
    finally:
        context.close()
