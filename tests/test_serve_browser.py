"""The explorer page in a real browser: Debian's headless chromium driven by Playwright.

CI installs ``chromium`` with apt (``.ci/run``); Playwright's own browser
download is never used.
"""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import sync_playwright

from test_serve_support import API_KEY, live_server, save, train_small
from torchmf.serve import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]
TIMEOUT_MS = 60_000  # generous: CI boxes can be busy


@pytest.fixture(scope="module")
def model():
    return train_small(seed=0)


@pytest.fixture(scope="module")
def base_url(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    save(model, folder / "model")
    (folder / "items.csv").write_text("item,title\n" + "".join(f"{i},Film {i:02d}\n" for i in range(80)))
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHMF_BROWSER_KEY", API_KEY)
    try:
        app = create_app(
            folder / "model", load="now", items=str(folder / "items.csv"), api_key_env="TORCHMF_BROWSER_KEY"
        )
    finally:
        mp.undo()
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def page(base_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 800})
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def test_explorer_page_end_to_end(page, base_url, model):
    page.goto(base_url + "/")
    # without the key the page shows the API's 401 message
    page.wait_for_function("document.getElementById('error').textContent.includes('API key')")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model-info').textContent.startsWith('model ')")
    assert "120 users, 80 items" in page.text_content("#model-info")

    # a user's top-10, with titles, in the model's order
    page.fill("#user-input", "5")
    page.click("#recommend-btn")
    page.wait_for_selector("#recs li .item")
    shown = page.locator("#recs li .item").all_text_contents()
    want = model.recommend(5, k=10)["item"].tolist()
    assert shown == [f"Film {i:02d}" for i in want]

    # search by title, rate two items, get session recommendations
    page.fill("#item-search", "FILM 01")  # case-insensitive
    page.wait_for_function("document.querySelector('#search-results li .item')?.textContent === 'Film 01'")
    page.locator("#search-results li").nth(0).locator("button.rate").nth(4).click()  # Film 01: 5
    page.fill("#item-search", "film 33")
    page.wait_for_function("document.querySelector('#search-results li .item')?.textContent === 'Film 33'")
    page.locator("#search-results li").nth(0).locator("button.rate").nth(0).click()  # Film 33: 1
    assert page.locator("#session-list li").all_text_contents() == ["Film 01: 5", "Film 33: 1"]
    page.click("#session-btn")
    page.wait_for_selector("#session-recs li .item")
    got = page.locator("#session-recs li .item").all_text_contents()
    want = model.recommend_for({1: 5.0, 33: 1.0}, k=10)["item"].tolist()
    assert got == [f"Film {i:02d}" for i in want]

    # click an item: its similar items
    page.locator("#recs li .item").nth(0).click()
    page.wait_for_selector("#similar li .item")
    first = model.recommend(5, k=1)["item"].iloc[0]
    assert page.text_content("#similar-title") == f"Similar to Film {first:02d}"
    sims = model.similar_items(first, k=10)["item"].tolist()
    assert page.locator("#similar li .item").all_text_contents() == [f"Film {i:02d}" for i in sims]

    # an unknown user: the API's message on the page
    page.fill("#user-input", "nobody")
    page.click("#recommend-btn")
    page.wait_for_function("document.getElementById('error').textContent === \"unknown user 'nobody'\"")
