"""The Gradio Space (`spaces/app.py`): its API through gradio_client, and its page in a real browser.

One app process serves the whole module (startup ~30 s here). The browser is Debian's `chromium`, driven by
Playwright (`.ci/run` installs both); `GRAPE_SPACE_SCREENSHOT=<path>` keeps the browser test's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SPACES = REPO_ROOT / "spaces"
CHROMIUM = "/usr/bin/chromium"
STARTUP_TIMEOUT = 240  # seconds; ~30 s on an idle 2-core CPU, more while other jobs run
EXAMPLES = json.loads((SPACES / "examples.json").read_text(encoding="utf-8"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    """`spaces/app.py` running on a free localhost port, as `make space` starts it."""
    import urllib.request

    from grape_hf.models import GEMMA3_270M_ID, resolve_model_path

    # The caption track's Gemma: its de-quantized copy is built once per machine (~2 min), outside the startup clock.
    resolve_model_path(GEMMA3_270M_ID)

    port = _free_port()
    log_path = tmp_path_factory.mktemp("space") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SPACES / "app.py")], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + STARTUP_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"spaces/app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/gradio_api/info", timeout=5):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(
                        f"spaces/app.py did not answer within {STARTUP_TIMEOUT} s:\n{log_path.read_text()[-3000:]}"
                    )
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def client(space_url):
    from gradio_client import Client

    return Client(space_url, verbose=False)


def _search(client, track, query, reference=None, num_rewrites=1, k=5):
    return client.predict(track, query, reference, num_rewrites, k, api_name="/search")


def test_api_caption_search_improves_the_target_rank(client):
    example = EXAMPLES["captions"][0]
    start = time.time()
    result = _search(client, "captions", example["query"])
    seconds = time.time() - start
    assert result["rewrites"] and result["rewrites"][0].strip()
    assert result["target"]["id"] == example["target_id"]
    ranks = result["target_rank"]
    assert ranks["original"] == example["rank_before"]  # the query as written: no generation, exact
    assert ranks["rewritten"] < ranks["original"]  # greedy rewrites may differ in a token across CPUs
    assert len(result["original"]) == len(result["rewritten"]) == 5
    assert [item["rank"] for item in result["rewritten"]] == [1, 2, 3, 4, 5]
    json.dumps(result)  # JSON-serialisable as it came over the wire
    assert seconds < 60, f"a caption search took {seconds:.1f} s"


def test_api_composed_search_with_a_reference_image(client, tmp_path):
    from gradio_client import handle_file

    example = EXAMPLES["composed"][0]
    sys.path.insert(0, str(SPACES))
    from grape_space import shapes_rows

    _, scenes = shapes_rows("composed")
    path = tmp_path / "reference.png"
    scenes[example["reference_id"]].render().save(path)
    result = _search(client, "images", example["query"], reference=handle_file(str(path)))
    assert result["shift"] == "composed"
    assert result["reference"]["id"] == example["reference_id"]
    assert result["target_rank"]["rewritten"] < result["target_rank"]["original"]


@pytest.mark.parametrize(
    ("track", "query", "upload", "message"),
    [
        ("captions", "", None, "The query is empty"),
        ("images", "   ", None, "The query is empty"),
        ("images", "", "image", "A reference image needs an edit"),
        ("images", "make the circle blue", "text", "is not an image"),
        ("captions", "Zwei Hunde", "image", "only works on the images track"),
    ],
)
def test_api_bad_inputs_get_a_clear_message(client, tmp_path, track, query, upload, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    reference = None
    if upload == "image":
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
        reference = handle_file(str(tmp_path / "red.png"))
    elif upload == "text":
        (tmp_path / "notes.png").write_text("this is not a picture\n")
        reference = handle_file(str(tmp_path / "notes.png"))
    with pytest.raises(AppError, match=message) as error:
        _search(client, track, query, reference=reference)
    assert "Traceback" not in str(error.value)


def test_api_long_emoji_and_mixed_script_queries_are_answered(client):
    long_query = ("Ich sehe einen kleinen roten Kreis links und ein großes blaues Quadrat in der Mitte. " * 120)[
        :10_000
    ]
    result = _search(client, "images", long_query, k=3)
    assert result["warnings"] and "10,000 characters" in result["warnings"][0]
    assert len(result["query"]) == 2000 and result["shift"] == "long_form"
    view = result["view"]["query"]
    assert view["cut"] and view["seen"] + view["unseen"] == result["query"] and view["tokens"] > view["context"]

    mixed = "🐶🐕 Ein Hund 在雪地里 court dans la neige 🎉"
    result = _search(client, "captions", mixed, k=3)
    assert result["query"] == mixed and result["target_rank"] is None and len(result["rewritten"]) == 3


def test_api_ten_parallel_requests_are_all_answered(client):
    queries = [row["query"] for row in EXAMPLES["captions"]] * 3
    queries = queries[:10]
    with ThreadPoolExecutor(max_workers=10) as pool:
        jobs = [client.submit("captions", q, None, 1, 3, api_name="/search") for q in queries]
        results = list(pool.map(lambda job: job.result(timeout=300), jobs))
    assert [r["query"] for r in results] == queries
    assert all(r["rewrites"] and len(r["rewritten"]) == 3 for r in results)


def test_retriever_view_marks_where_the_clip_context_cuts():
    sys.path.insert(0, str(SPACES))
    from grape_space import retriever_view

    from grape_hf import load_retriever

    clip = load_retriever("open_clip:grape-shapes-clip@grape-shapes", device="cpu")
    text = "a small red circle on the left. " * 6
    view = retriever_view(clip, text)
    assert view["cut"] and view["context"] == 30 and view["seen"] + view["unseen"] == text
    assert len(clip.tokenizer.encode(view["seen"])) == 30  # exactly what open_clip keeps
    assert retriever_view(clip, "a small red circle")["cut"] is False


@pytest.mark.slow
def test_browser_examples_show_the_rewrite_and_a_better_rank(space_url, tmp_path):
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.fail(
            f"Chromium is not at {CHROMIUM}; install it with `apt-get install -y chromium` (`make test-all` does, "
            "through scripts/setup_browser.sh)."
        )
    from playwright.sync_api import sync_playwright

    screenshot = Path(os.environ.get("GRAPE_SPACE_SCREENSHOT", tmp_path / "space.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(space_url)
            page.wait_for_selector("#grape-search", timeout=60_000)
            # One example of each kind, ending on the composed one (the screenshot shows its images).
            for shift, panel in (
                ("captions", "#grape-before-table table"),
                ("multilingual", "#grape-before img"),
                ("composed", "#grape-after img"),
            ):
                example = EXAMPLES[shift][0]
                page.locator(f"#grape-examples-{shift} button").first.click()
                result = page.locator(f"#grape-summary .grape-result[data-shift='{shift}']")
                result.wait_for(timeout=120_000)
                page.wait_for_selector(panel, timeout=30_000)
                before_after = (
                    ("#grape-before-table", "#grape-after-table")
                    if shift == "captions"
                    else ("#grape-before", "#grape-after")
                )
                for selector in before_after:
                    assert page.locator(selector).is_visible()
                assert page.locator("#grape-summary .grape-rewrite").first.inner_text().strip()
                rank = page.locator("#grape-summary .grape-rank")
                before, after = int(rank.get_attribute("data-rank-before")), int(rank.get_attribute("data-rank-after"))
                assert before == example["rank_before"]
                assert after < before, f"{shift}: the target's rank went {before} -> {after}"
            assert page.locator("#grape-after img").count() >= 1
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
