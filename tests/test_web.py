"""The page at / in a real browser: Debian's headless Chromium driven by selenium, against a real `tome serve`
(a subprocess), a real Celery worker, PostgreSQL, Redis (DB 11) and the SmolLM2 engine.

A person's path: a wrong key shows the API's own error; upload a PDF (an image-only page, an outline), ask two
questions, watch the progress arrive over Server-Sent Events, read both answers with the passage highlighted in
the document view on its page; the job is listed and reopens; a second job is cancelled; the page fits a phone.
Screenshots go to test-artifacts/screenshots/ (gitignored; TOME_TEST_ARTIFACTS moves it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.pdfgen import Heading, Page, book, make_pdf
from bench.stack import Worker
from tests.helpers import ALICE, BOB, ROOT, flushed, free_port, private_home, stack_env, wait_for

pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/11"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("TOME_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"
QUESTIONS = ["What is the name of the cat?", "Who is the lighthouse keeper?"]
STORY = [
    "The lighthouse keeper of Saint Brell was a woman named Orla Venn.",
    "Every evening she climbed the one hundred and twelve steps of the tower to light the lamp.",
    "Every morning she wrote the weather in a green ledger.",
    "Her only companion was a grey cat called Pilot, who slept on the warm stones beside the lamp.",
    "Supply boats came from the harbour town of Keswith on the first day of each month.",
    "They brought oil, flour and letters.",
]


def keeper_pdf() -> bytes:
    """Page 1 a title, page 2 an image without text, the story on page 3, a note on page 4; bookmarks."""
    pages = [
        Page(["The Keeper of Saint Brell", "A short account of the lighthouse."]),
        Page([]),
        Page(["The Keeper", *STORY]),
        Page(["Notes", "The tower was painted white and red in the spring."]),
    ]
    outline = [Heading("Title page", 1), Heading("The Keeper", 3), Heading("Notes", 4)]
    return make_pdf(pages, outline)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[dict[str, str]]:
    with flushed(REDIS_URL):
        yield stack_env(database, REDIS_URL, private_home(tmp_path_factory))


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tome serve` as a person runs it, and one worker."""
    logs = tmp_path_factory.mktemp("web")
    port = free_port()
    tome = Path(sys.executable).with_name("tome")
    command = [str(tome)] if tome.exists() else [sys.executable, "-c", "from service.cli import main; main()"]
    log = (logs / "serve.log").open("w")
    proc = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = Worker(env, "web1", logs / "worker.log")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 90, "tome serve")
        yield base
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        worker.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def script_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """JavaScript errors the page raised (failed requests the test provoked are not errors of the page)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") == "javascript"]


def set_key(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "refresh-jobs").click()


def test_wrong_key_shows_the_api_error(server: str, browser: WebDriver) -> None:
    browser.get(server + "/")
    assert browser.title.startswith("Tome")
    set_key(browser, "not-a-key-0123456789abcdef")
    box = browser.find_element(By.ID, "error")
    error = wait_for(lambda: box.is_displayed() and box.text, 20, "the error")
    problem = httpx.get(f"{server}/v1/jobs", headers={"Authorization": "Bearer not-a-key-0123456789abcdef"}).json()
    assert error == f"{problem['title']}: {problem['detail']}" == "Unauthorized: the API key is not valid"
    shot(browser, "wrong-key")
    assert script_errors(browser) == []


def watch_progress(browser: WebDriver) -> list[str]:
    """Progress as it arrives: every distinct line the page showed, until both answers are there (and the final
    line, read once it has settled: the answers and that line come from the same end event)."""
    seen: list[str] = []
    running_shot = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if browser.find_element(By.ID, "error").is_displayed():
            pytest.fail(f"the page shows an error: {text_of(browser, 'error')}")
        line = text_of(browser, "progress-text") if browser.find_element(By.ID, "progress").is_displayed() else ""
        if line and (not seen or seen[-1] != line):
            seen.append(line)
        if line.startswith("running") and not running_shot:
            shot(browser, "progress")
            running_shot = True
        if len(browser.find_elements(By.CSS_SELECTOR, "#answers li.answer")) == 2:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"no answers after 600 s; progress seen: {seen}")
    wait_for(lambda: text_of(browser, "progress-text").startswith("completed"), 10, "the completed line")
    if seen[-1] != text_of(browser, "progress-text"):
        seen.append(text_of(browser, "progress-text"))
    return seen


def api_shows_the_same_evidence(server: str) -> None:
    """The API says what the page showed: evidence spans carry their page, the result names the image-only page."""
    with httpx.Client(base_url=server, headers={"X-API-Key": ALICE}, timeout=30) as api:
        job = api.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        assert job["result"]["document"] == {"pages": 4, "image_only_pages": [2]}
        evidence = job["result"]["answers"][0]["evidence"]
        assert evidence and all(e["page"] in (1, 3, 4) and e["section"] for e in evidence)  # never the image page
        if job["strategy"] == "full":  # it read it all, from page 1 (rag: the windows it retrieved)
            assert evidence[0]["page"] == 1 and evidence[0]["section"] == "Title page"
        content = api.get(f"/v1/documents/{job['document_id']}/text").json()
        assert content["image_only_pages"] == [2] and [p for p, _, _ in content["page_spans"]] == [1, 3, 4]
        assert api.get(f"/v1/documents/{job['document_id']}/text", headers={"X-API-Key": BOB}).status_code == 404


def test_upload_ask_watch_and_read_the_evidence(server: str, browser: WebDriver, tmp_path: Path) -> None:
    pdf = tmp_path / "keeper.pdf"
    pdf.write_bytes(keeper_pdf())
    browser.get(server + "/")
    set_key(browser, ALICE)
    wait_for(lambda: "No jobs yet" in text_of(browser, "jobs"), 20, "the empty job list")
    assert not browser.find_element(By.ID, "error").is_displayed()
    browser.find_element(By.ID, "file").send_keys(str(pdf))
    assert "keeper.pdf" in text_of(browser, "file-name")
    browser.find_element(By.ID, "questions").send_keys("\n".join(QUESTIONS))
    browser.find_element(By.ID, "submit").click()

    seen = watch_progress(browser)
    assert text_of(browser, "progress-via") == "Live: Server-Sent Events"
    assert any(s.startswith("running") for s in seen), seen
    assert seen[-1].startswith("completed"), seen
    # The router picks full (the story fits); where full's answer is not backed by the text, rag answers instead
    route = text_of(browser, "progress-route")
    assert "Strategy full" in route or ("Strategy rag" in route and "fell back to rag: full's" in route), route

    answers = browser.find_elements(By.CSS_SELECTOR, "#answers li.answer")
    assert [a.find_element(By.CSS_SELECTOR, "h3").text for a in answers] == QUESTIONS
    for answer in answers:
        badge = answer.find_element(By.CSS_SELECTOR, ".badge").text
        assert badge.startswith(("Supported", "Not supported"))
        assert "model call" in answer.find_element(By.CSS_SELECTOR, ".cost").text
    meta = text_of(browser, "doc-meta")
    assert "4 pages" in meta and "image-only, not read: page 2" in meta
    assert "Page 2: image only" in text_of(browser, "doc-view")

    # The answer's sentence is highlighted on its page (3: the story), and Enter on its evidence jumps there.
    found = browser.find_elements(By.CSS_SELECTOR, "#doc-view mark.found")
    assert found, [a.text for a in answers]
    buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, "button.evidence") if "page 3" in b.text]
    said = [a.find_element(By.CSS_SELECTOR, ".answer-text").text for a in answers]
    assert buttons, (said, [b.text for b in browser.find_elements(By.CSS_SELECTOR, "button.evidence")])
    assert "The Keeper" in buttons[0].text  # its section, from the PDF's outline
    buttons[0].send_keys(Keys.ENTER)
    active = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#doc-view mark.active"), 10, "the jump")
    assert any(w in active[0].text for w in ("Pilot", "Orla", "Venn", "cat", "keeper")), active[0].text
    assert browser.switch_to.active_element == active[0]  # focus moved to the passage
    visible = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(), v = document.getElementById('doc-view')"
        ".getBoundingClientRect(); return r.top >= v.top && r.bottom <= v.bottom;",
        active[0],
    )
    assert visible
    shot(browser, "answers")

    api_shows_the_same_evidence(server)

    # Past jobs: listed, and reopened after a reload (the key stays for the browser tab).
    browser.refresh()
    job = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs button.job.completed"), 20, "the job list")
    job[0].click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#answers li.answer")) == 2, 20, "the reopened job")
    assert browser.find_elements(By.CSS_SELECTOR, "#doc-view mark.found")

    # A phone-sized screen: one column, nothing wider than the screen.
    browser.set_window_size(390, 844)
    time.sleep(0.3)
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width
    shot(browser, "phone")
    browser.set_window_size(1400, 1000)
    assert script_errors(browser) == []


def test_docx_upload_keeps_its_headings(server: str, tmp_path: Path) -> None:
    from tests.test_document_structure import docx_bytes

    with httpx.Client(base_url=server, headers={"X-API-Key": ALICE}, timeout=30) as api:
        files = {"file": ("keeper.docx", docx_bytes(), "application/octet-stream")}
        uploaded = api.post("/v1/documents", files=files)
        assert uploaded.status_code == 201, uploaded.text
        content = api.get(f"/v1/documents/{uploaded.json()['id']}/text").json()
        assert content["media_type"] == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        assert [h["title"] for h in content["outline"]] == ["Saint Brell", "The keeper", "Supplies"]
        assert "Oil | 12 barrels" in content["text"] and content["page_spans"] == []
        odd = api.post("/v1/documents", files={"file": ("notes.odt", b"PK\x03\x04 odt", "application/octet-stream")})
        assert odd.status_code == 415 and ".docx" in odd.json()["detail"]


DROP = """
const data = new DataTransfer();
data.items.add(new File([arguments[0]], "notes.md", {type: "text/markdown"}));
const zone = document.getElementById("drop");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
}
"""


def test_drop_a_file_poll_and_cancel(server: str, browser: WebDriver) -> None:
    """A file dropped on the page, progress by polling (`?transport=poll`, the fallback), then Cancel."""
    browser.get(server + "/?transport=poll")
    set_key(browser, ALICE)
    browser.execute_script(DROP.replace("notes.md", "notes.odt"), "not a format we read")
    browser.find_element(By.ID, "questions").send_keys("Anything?")
    browser.find_element(By.ID, "submit").click()
    error = wait_for(lambda: (box := browser.find_element(By.ID, "error")).is_displayed() and box.text, 20, "it")
    assert error.startswith("Unusable document: notes.odt: unsupported file type '.odt'; supported: "), error
    browser.find_element(By.ID, "questions").clear()
    note = "# Harbour notes\n\n" + "\n".join(f"Line {i} of a note about the harbour and its lamps." for i in range(60))
    browser.execute_script(DROP, note)
    assert text_of(browser, "file-name").startswith("notes.md (")
    browser.find_element(By.ID, "questions").send_keys("How many lines are there?\nWhat is lit?")
    browser.find_element(By.ID, "submit").click()
    cancel = wait_for(lambda: (b := browser.find_element(By.ID, "cancel")).is_displayed() and b, 60, "Cancel")
    assert wait_for(lambda: text_of(browser, "progress-via"), 10, "the transport") == "Polling every second"
    cancel.click()
    wait_for(lambda: text_of(browser, "progress-text").startswith("cancelled"), 30, "the cancelled job")
    assert "The job was cancelled." in text_of(browser, "answers-empty")
    assert not browser.find_element(By.ID, "error").is_displayed()
    listed = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs button.job.cancelled"), 20, "the list")
    assert listed


FACTS = {
    47: "The harbour master's cat was a ginger tom called Marmalade Quill.",
    118: "The lighthouse on Saint Brell was first lit in the year 1847 by Edmund Harrow.",
}
LONG_QUESTIONS = ["What was the harbour master's cat called?", "Who first lit the lighthouse on Saint Brell?"]


def long_pdf(pages: int = 150) -> bytes:
    """About 100K tokens of prose-like filler over `pages` pages, the two facts planted mid-page on pages 47 and 118."""
    _, filler = book(pages, seed=30)
    for number, fact in FACTS.items():
        filler[number - 1].lines.insert(20, fact)
    return make_pdf(filler, [Heading(f"Part {i + 1}", 1 + 30 * i) for i in range(pages // 30)])


def test_a_long_pdf_two_answers_on_their_pages(server: str, browser: WebDriver, tmp_path: Path) -> None:
    """The issue's bar: a ~100K-token PDF, two questions, both answers read with their pages highlighted."""
    pdf = tmp_path / "harbour.pdf"
    pdf.write_bytes(long_pdf())
    browser.get(server + "/")
    set_key(browser, ALICE)
    browser.find_element(By.ID, "file").send_keys(str(pdf))
    browser.find_element(By.ID, "questions").send_keys("\n".join(LONG_QUESTIONS))
    started = time.monotonic()
    browser.find_element(By.ID, "submit").click()
    wait_for(
        lambda: (
            len(browser.find_elements(By.CSS_SELECTOR, "#answers li.answer")) == 2
            or browser.find_element(By.ID, "error").is_displayed()
        ),
        900,
        "two answers",
        every=0.5,
    )
    assert not browser.find_element(By.ID, "error").is_displayed(), text_of(browser, "error")
    print(f"100K-token PDF: two answers in {time.monotonic() - started:.0f} s; {text_of(browser, 'progress-route')}")
    tokens = int("".join(c for c in text_of(browser, "progress-route").split("·")[-1] if c.isdigit()) or 0)
    assert tokens > 80_000, text_of(browser, "progress-route")
    pages = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "button.evidence")]
    assert any("page 47" in p for p in pages) and any("page 118" in p for p in pages), pages
    for page in (47, 118):
        button = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button.evidence") if f"page {page}" in b.text)
        button.send_keys(Keys.ENTER)
        active = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#doc-view mark.active"), 10, "the jump")
        assert active[0].is_displayed()
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "long-pdf")
