"""The playground page in a real headless browser (Debian's chromium driven by Playwright).

Type a prompt, press Generate, watch the streamed text appear; a bad value shows the server's
message. Skipped, with the reason, only when Playwright or a chromium binary cannot be found.
Network stays on loopback: chromium runs with background networking, sync and updates off.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch
from _serve_helpers import slow_model

from minigpt.generation import generate
from minigpt.serve import ServeSettings, create_app
from minigpt.serve.background import ThreadServer

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("MINIGPT_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and os.path.exists(candidate):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM = _chromium()
pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'minigpt-course[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary found (apt-get install -y chromium, or set MINIGPT_CHROMIUM)"
)


@pytest.fixture(scope="module")
def page_and_model():
    model, tok = slow_model()  # 20 ms per token, so the stream is visibly token by token
    app = create_app(model, tok, ServeSettings(max_new_tokens_limit=64, cache_size=0))
    profile = tempfile.mkdtemp(prefix="minigpt-chromium-")
    with ThreadServer(app) as url, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, timeout=30_000,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            sync_api.expect.set_options(timeout=30_000)  # a busy CI machine can be slow; bounded all the same
            page.goto(url + "/")
            yield page, model, tok
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_playground_streams_generated_text(page_and_model):
    page, model, tok = page_and_model
    sync_api.expect(page.locator("#model")).to_contain_text("parameters")  # /v1/model was read
    page.fill("#prompt", "to be")
    page.check("#greedy")
    page.fill("#max_new_tokens", "60")
    page.click("#generate")
    # Mid-stream: some text is on the page while the Stop button is still enabled.
    page.wait_for_function("document.querySelector('#completion') && "
                           "document.querySelector('#completion').textContent.length > 0")
    partial = page.text_content("#completion")
    assert 0 < len(partial) < 60
    sync_api.expect(page.locator("#stats")).to_contain_text("tokens/s")
    sync_api.expect(page.locator("#generate")).to_be_enabled()  # the stream ended
    idx = torch.tensor([tok.encode("to be")])
    expected = tok.decode(generate(model, idx, 60, greedy=True)[0, idx.size(1):])
    assert page.text_content("#completion") == expected
    assert "60 tokens" in page.text_content("#stats")
    assert not page.is_visible("#error")


def test_playground_shows_the_servers_message_for_a_bad_value(page_and_model):
    page, _, _ = page_and_model
    page.uncheck("#greedy")
    page.fill("#prompt", "to be")
    page.fill("#temperature", "0")
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_be_visible()
    sync_api.expect(page.locator("#error")).to_contain_text("temperature: must be > 0")
    page.fill("#temperature", "0.8")
    page.fill("#prompt", "To Be")  # capitals are not in this model's vocabulary
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_contain_text("'T' 'B'")
