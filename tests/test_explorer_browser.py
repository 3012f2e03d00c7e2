"""The explorer page (``GET /explorer``) in a real headless Chromium against ``python -m
serving.server`` on localhost, plus the gallery routes it calls.

Expectations come from the REST API called directly by the test (the page must show exactly
what the public API answers), from the gallery files on disk, and from the exported SavedModel's
attention maps. The browser is Debian's ``chromium`` driven through ``chromium-driver`` by
selenium; without them the test skips, except under ``CI=true`` where it fails.

Every wait is on a state the page reports (``body[data-state]``, ``#results[data-attention]``),
never on time.
"""

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dgml_tf.index import build_index
from dgml_tf.index.gallery import SavedModelEmbedder
from serving.synthetic_gallery import class_image, export_tiny_embedder, synthetic_gallery

LABELS = [i % 6 for i in range(18)]
K = 3  # groups of the tiny embedder
REPO = Path(__file__).absolute().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 120


def _browser_missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (CHROMIUM and CHROMEDRIVER):
        return "chromium / chromium-driver are not installed (scripts/setup.sh installs them)"
    return ""


if _browser_missing():
    if os.environ.get("CI", "").lower() == "true":
        # A missing browser in CI is a broken set-up, not a reason to skip.
        pytest.fail(f"The explorer browser test cannot run: {_browser_missing()}", pytrace=False)
    pytest.skip(_browser_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from serving_harness import ServerProcess, b64, http  # noqa: E402


def _index(root: Path, name: str, saved_model, images, expose_paths: bool) -> Path:
    folder = root / f"{name}_files"
    folder.mkdir()
    paths = []
    for i, data in enumerate(images):
        (folder / f"{i}.png").write_bytes(data)
        paths.append(str(folder / f"{i}.png"))
    embedder = SavedModelEmbedder(saved_model)
    build_index(root / name, embedder.embed_bytes(images)["embedding"], embedder.fingerprint,
                ids=[f"item/{i}" for i in range(len(images))], labels=LABELS, paths=paths,
                num_groups=K, backend="exact", model_dir=str(saved_model),
                expose_paths=expose_paths)
    return root / name


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("explorer")
    saved_model = export_tiny_embedder(root / "models", "dgml", 1, seed=3)
    images = synthetic_gallery(LABELS, size=64)
    from dgml_tf.index.gallery import encode_png

    query = root / "query.png"  # a new member of class 2, not in the gallery
    query.write_bytes(encode_png(class_image(2, 99, 64)))
    refused = root / "refused.png"
    refused.write_bytes(b"this is not an image, whatever its name says")
    loaded = tf.saved_model.load(str(saved_model))
    attention = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["attention"]
    return {"root": root, "images": images, "query": query, "refused": refused,
            "attention": attention.numpy(), "base": root / "models" / "dgml",
            "index": _index(root, "index", saved_model, images, expose_paths=True),
            "private_index": _index(root, "private", saved_model, images, expose_paths=False)}


def _serve(assets, index_dir, log_name) -> ServerProcess:
    """A real server process, ready once it has logged its ready line."""
    return ServerProcess(["--model_name=dgml", f"--model_base_path={assets['base']}",
                          f"--index_dir={index_dir}", "--grpc_port=-1", "--host=127.0.0.1"],
                         assets["root"] / log_name)


def _stop(process: ServerProcess) -> None:
    try:
        process.stop(timeout=60)
    finally:
        process.kill()


@pytest.fixture(scope="module")
def server(assets):
    process = _serve(assets, assets["index"], "server.log")
    yield process.url
    _stop(process)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait(driver, condition, message):
    return WebDriverWait(driver, WAIT_S).until(condition, message)


def page_state(driver):
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def open_page(driver, url):
    driver.get(url + "/explorer")
    wait(driver, lambda d: page_state(d) in ("idle", "error"), "the page did not load the model")
    assert page_state(driver) == "idle", driver.find_element(By.ID, "error").text


def results(driver):
    """[(id, score text, label text, overlay groups, overlay alpha sum, image src, bars)]."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#results > li')].map((li) => {
          const canvas = li.querySelector('canvas');
          const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let alpha = 0;
          for (let i = 3; i < data.length; i += 4) alpha += data[i];
          const img = li.querySelector('img');
          return {id: li.dataset.id, rank: li.dataset.rank,
                  score: li.querySelector('.score').textContent,
                  label: li.querySelector('.label').textContent,
                  groups: canvas.dataset.groups, alpha: alpha, src: img ? img.src : null,
                  bars: [...li.querySelectorAll('.bars li')].map((b) => Number(b.dataset.score)),
                  searched: [...li.querySelectorAll('.bars li.searched')].map((b) => b.dataset.group)};
        });""")


def wait_results(driver, group="all"):
    wait(driver, lambda d: d.find_element(By.ID, "results").get_attribute("data-group") == group
         and d.find_element(By.ID, "results").get_attribute("data-attention") in ("ready", "unavailable")
         or page_state(d) == "error", f"no results for group {group}")
    assert page_state(driver) == "ready", driver.find_element(By.ID, "error").text


def rest_neighbours(url, image: bytes, k: int, group=None) -> dict:
    body = {"instances": [b64(image)], "k": k}
    if group is not None:
        body["group"] = group
    status, doc = http(url + "/v1/models/dgml_retrieval:predict", "POST", body)
    assert status == 200, doc
    return doc["predictions"][0]


# ---------------------------------------------------------------- the gallery routes


def test_gallery_routes(server, assets):
    status, doc = http(server + "/v1/gallery/dgml_retrieval?limit=6")
    assert status == 200 and doc["images_available"] and doc["num_items"] == len(LABELS)
    # Spread over the labels: the first 6 items cover the 6 classes.
    assert sorted(item["label"] for item in doc["items"]) == list(range(6))
    status, item = http(server + "/v1/gallery/dgml_retrieval/item?id=item/4")
    assert status == 200 and item["label"] == LABELS[4] and item["content_type"] == "image/png"
    assert base64.b64decode(item["image_bytes"]["b64"]) == assets["images"][4]
    assert http(server + "/v1/gallery/dgml_retrieval/versions/1/item?id=item/4")[1] == item
    for path, code in (("/v1/gallery/dgml_retrieval/item?id=nope", 404),
                       ("/v1/gallery/nope", 404),
                       ("/v1/gallery/dgml", 400),  # not a retrieval model
                       ("/v1/gallery/dgml_retrieval?limit=0", 400),
                       ("/v1/gallery/dgml_retrieval?limit=abc", 400),
                       ("/v1/gallery/dgml_retrieval/item", 400),
                       ("/v1/gallery/dgml_retrieval/other", 400)):
        status, doc = http(server + path)
        assert status == code and doc["error"], (path, status, doc)


# ---------------------------------------------------------------- the page


def test_explorer_query_overlays_groups_and_errors(server, assets, browser):
    open_page(browser, server)
    # Controls are labelled; the group choice offers the whole embedding and each group.
    for control in ("model", "k", "group", "file"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{control}']"), control
    assert [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "group")).options] \
        == ["", "0", "1", "2"]
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img[src^='data:']")) == 18,
         "the sample gallery did not load")

    k = 5
    field = browser.find_element(By.ID, "k")
    field.clear()
    field.send_keys(str(k))
    browser.find_element(By.ID, "file").send_keys(str(assets["query"]))
    wait_results(browser)
    shown = results(browser)
    query = assets["query"].read_bytes()
    expected = rest_neighbours(server, query, k)
    assert [r["id"] for r in shown] == expected["ids"]
    assert [r["rank"] for r in shown] == [str(i) for i in range(1, k + 1)]
    assert [r["score"] for r in shown] == [f"score {s:.3f}" for s in expected["scores"]]
    assert [r["label"] for r in shown] == [f"label {lab}" for lab in expected["labels"]]
    np.testing.assert_allclose([r["bars"] for r in shown], expected["group_scores"], atol=1e-6)
    for r in shown:
        # Every neighbour shows its gallery image and an overlay of each of the K groups.
        assert r["groups"] == "0,1,2" and r["alpha"] > 0, r
        position = int(r["id"].split("/")[1])
        assert base64.b64decode(r["src"].split(",", 1)[1]) == assets["images"][position]
    # Each overlay is drawn from that image's attention maps as the model computes them.
    maps = browser.execute_script(
        "return [...document.querySelectorAll('#results canvas')].map((c) => JSON.parse(c.dataset.maps))")
    for r, drawn in zip(shown, maps):
        np.testing.assert_allclose(drawn, assets["attention"][int(r["id"].split("/")[1])], atol=1e-5)
    assert np.shape(maps) == (k, K) + assets["attention"].shape[2:]
    assert browser.execute_script(
        "return document.getElementById('query-overlay').dataset.groups") == "0,1,2"

    # One group: the ranking is that group's, as REST answers it, and it differs from the
    # whole-embedding ranking for at least one group.
    answers = {g: rest_neighbours(server, query, k, group=g) for g in range(K)}
    group = next((g for g in range(K) if answers[g]["ids"] != expected["ids"]), None)
    assert group is not None, "every group ranks like the whole embedding; pick another query"
    Select(browser.find_element(By.ID, "group")).select_by_value(str(group))
    wait_results(browser, str(group))
    shown = results(browser)
    assert [r["id"] for r in shown] == answers[group]["ids"] != expected["ids"]
    assert [r["score"] for r in shown] == [f"score {s:.3f}" for s in answers[group]["scores"]]
    assert all(r["searched"] == [str(group)] and r["groups"] == "0,1,2" for r in shown)

    # Keyboard: Space on a group's checkbox hides that group's overlay everywhere.
    box = browser.find_element(By.CSS_SELECTOR, "#legend-items input[data-group='1']")
    box.send_keys(Keys.SPACE)
    assert not box.is_selected()
    assert {r["groups"] for r in results(browser)} == {"0,2"}
    box.send_keys(Keys.SPACE)

    # A sample gallery item chosen with the keyboard finds itself first.
    first = browser.find_elements(By.CSS_SELECTOR, "#gallery button")[3]
    Select(browser.find_element(By.ID, "group")).select_by_value("")
    wait_results(browser)
    first.send_keys(Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.ID, "results").get_attribute("data-query")
         == "gallery item item/3"
         and d.find_element(By.ID, "results").get_attribute("data-attention") == "ready",
         "the gallery item's query did not finish")
    shown = results(browser)
    assert shown[0]["id"] == "item/3" and shown[0]["score"] == "score 1.000"

    # Everything the page loaded came from this server (or is inline data).
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)")
    assert loaded and all(url.startswith((server + "/", "data:")) for url in loaded), loaded

    # Drag and drop: a file dropped on the drop zone becomes the query.
    dropped = assets["images"][7]
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const zone = document.getElementById("drop-zone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        """, base64.b64encode(dropped).decode("ascii"))
    wait(browser, lambda d: d.find_element(By.ID, "results").get_attribute("data-query") == "dropped.png"
         and d.find_element(By.ID, "results").get_attribute("data-attention") == "ready",
         "the dropped file's query did not finish")
    assert [r["id"] for r in results(browser)] == rest_neighbours(server, dropped, k)["ids"]

    # A file the server refuses: the page shows the server's JSON error.
    status, refusal = http(server + "/v1/models/dgml_retrieval:predict", "POST",
                           {"instances": [b64(assets["refused"].read_bytes())], "k": k,
                            "return_attention": True})
    assert status == 400
    browser.find_element(By.ID, "file").send_keys(str(assets["refused"]))
    wait(browser, lambda d: page_state(d) == "error", "the refusal was not shown")
    error_box = browser.find_element(By.ID, "error")
    assert error_box.is_displayed() and error_box.get_attribute("role") == "alert"
    assert json.loads(browser.find_element(By.ID, "error-json").text) == refusal
    assert refusal["error"] in browser.find_element(By.ID, "error-text").text


def test_explorer_fits_phone_and_desktop_widths(server, assets, browser):
    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(assets["query"]))
    wait_results(browser)
    for width in (390, 1280):
        browser.set_window_size(width, 900)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"horizontal scrolling at {width} px: {overflow} px too wide"
    columns = browser.execute_script(
        "return getComputedStyle(document.querySelector('main')).gridTemplateColumns.split(' ').length")
    assert columns == 2  # controls beside results on a desktop; one column on a phone (above)


def test_explorer_empty_gallery_state(assets, browser):
    process = _serve(assets, assets["private_index"], "private.log")
    url = process.url
    try:
        status, doc = http(url + "/v1/gallery/dgml_retrieval")
        assert status == 200 and doc["items"] == [] and not doc["images_available"]
        assert "--store_images" in doc["reason"]
        assert http(url + "/v1/gallery/dgml_retrieval/item?id=item/1")[0] == 400
        open_page(browser, url)
        wait(browser, lambda d: "no images" in d.find_element(By.ID, "gallery-state").text,
             "the empty gallery was not announced")
        assert "--store_images" in browser.find_element(By.ID, "gallery-state").text
        # Queries still work; neighbours say why they have no image.
        browser.find_element(By.ID, "file").send_keys(str(assets["query"]))
        wait_results(browser)
        shown = results(browser)
        assert [r["id"] for r in shown] == rest_neighbours(url, assets["query"].read_bytes(), 5)["ids"]
        assert browser.find_element(By.ID, "results").get_attribute("data-attention") == "unavailable"
        assert all(r["src"] is None for r in shown)
    finally:
        _stop(process)
