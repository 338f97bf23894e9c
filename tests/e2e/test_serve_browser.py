"""`python -m pipeline serve` in a real browser: headless Debian chromium driven by Selenium through the
system chromedriver (no browser or driver download). Upload a photo, find the cartoon on the page; a
non-image and a truncated JPEG show an error on the page; the generate tab draws an image."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from e2e_helpers import REPO, env, free_port

pytestmark = pytest.mark.slow


def _driver():
    pytest.importorskip("selenium")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture
def server(tmp_path, tiny_experiment):
    args, _, _ = tiny_experiment
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port), "--steps", "20", *args],
                            cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"serve did not come up:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, tmp_path
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _photo(path, size=(90, 60)):
    from PIL import Image

    img = Image.new("RGB", size, (200, 150, 120))
    for x in range(20, 70):
        for y in range(10, 50):
            img.putpixel((x, y), (240, 200, 170) if (x - 45) ** 2 / 625 + (y - 30) ** 2 / 400 < 1 else (60, 40, 30))
    img.save(path)
    return path


def test_upload_a_photo_and_see_the_cartoon(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("dlib")
    from PIL import Image

    photo = tmp_path / "astronaut.jpg"  # a real photo: the page finds and aligns her face (the default crop)
    Image.fromarray(skdata.astronaut()).save(photo, quality=92)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    buf = io.BytesIO()
    Image.open(_photo(tmp_path / "face.png")).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    drv = _driver()
    try:
        drv.get(url)
        wait = WebDriverWait(drv, 90)
        drv.find_element(By.ID, "photo").send_keys(str(photo))
        drv.find_element(By.ID, "go").click()
        img = wait.until(EC.presence_of_element_located((By.ID, "cartoon")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 16)
        assert "done: pixel mse" in drv.find_element(By.ID, "progress").text
        assert drv.find_element(By.ID, "download").get_attribute("href").endswith("/cartoon.png")
        for bad, words in ((text, "not an image that can be read"), (tmp_path / "cut.jpg", "not an image that can be read")):
            drv.find_element(By.ID, "photo").clear()
            drv.find_element(By.ID, "photo").send_keys(str(bad))
            drv.find_element(By.ID, "go").click()
            wait.until(lambda d: words in d.find_element(By.ID, "error").text)
            assert bad.name in drv.find_element(By.ID, "error").text
        drv.find_element(By.ID, "tab-generate").click()
        gen = drv.find_element(By.ID, "gen")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", gen) == 16)
        drv.save_screenshot(str(tmp_path / "page.png"))
    finally:
        drv.quit()
