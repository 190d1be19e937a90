"""The caption review grid of the Dataset tab: pure parts (filter, pages, links, phrases) here, and the grid in a
real browser (Playwright + Debian's chromium, like tests/test_ui_browser.py): edit in place, keyboard navigation,
pages, the filter, "Regenerate" through a caption job, and a doctor finding's link. Screenshots go to
test-artifacts/ui-review/."""
from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from tests.test_ui_browser import PAGE_TIMEOUT_MS, browser, page_url  # noqa: F401  (fixtures: a browser, a served app)
from ui.caption_review import PAGE_SIZE, ReviewFilter, filtered, page_of, phrase_rows, review_links

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui-review"
LONG = ", ".join(f"detail number {i}" for i in range(40))


def make_review_dataset(folder: Path, n: int = PAGE_SIZE + 2) -> Path:
    """n images in a Kohya folder; most captions say "sks", two do not, one is very long, one is missing."""
    subset = folder / "1_sks toy"
    subset.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (48, 48), (40 + i * 12, 90, 200 - i * 8)).save(subset / f"toy_{i:02d}.png")
        if i == 3:
            continue  # no caption file: trains on the folder's "sks toy"
        caption = {1: "A wooden toy on a table.", 2: "A wooden toy on a red table.", 5: f"sks, {LONG}"}.get(
            i, f"sks toy, a wooden toy on a table, photo {i}")
        (subset / f"toy_{i:02d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def test_filter_pages_links_and_phrases(tmp_path):
    folder = make_review_dataset(tmp_path / "set")
    names = lambda images: [Path(image.relative).stem for image in images]  # noqa: E731
    assert names(filtered(folder, ReviewFilter(lacks="sks"))) == ["toy_01", "toy_02"]  # toy_03 trains on "sks toy"
    assert names(filtered(folder, ReviewFilter(longer_than=75))) == ["toy_05"]
    assert names(filtered(folder, ReviewFilter(contains="RED TABLE"))) == ["toy_02"]
    assert names(filtered(folder, ReviewFilter(contains="tab"))) == []  # whole words only
    assert names(filtered(folder, ReviewFilter(image="1_sks toy/toy_07.png"))) == ["toy_07"]
    everything = filtered(folder, ReviewFilter())
    assert len(page_of(everything, 0)[0]) == PAGE_SIZE and page_of(everything, 5)[1:] == (1, 2)
    assert review_links(["1_sks toy/a b.png (about 90 tokens)"]) == \
        ["- [`1_sks toy/a b.png (about 90 tokens)`](#review:1_sks%20toy/a%20b.png)"]
    rows = dict((phrase, count) for phrase, count in phrase_rows(folder))
    assert rows["wooden toy"] == 2 and rows["table"] == 2 and "sks" not in rows  # sentences only, not tag lists


def wait_for_file(path: Path, expected: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text == expected:
            return text
        time.sleep(0.2)
    return text


def test_review_grid_edit_navigate_filter_regenerate_and_doctor_link(browser, page_url):  # noqa: F811
    url, root = page_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    subset = make_review_dataset(root / "datasets" / "review-set") / "1_sks toy"
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    count = page.locator("#review-count")
    try:
        page.goto(url)
        page.locator("#dataset-choice input").first.click()
        page.get_by_role("option", name="review-set").click()
        count.get_by_text(f"{PAGE_SIZE + 2} image(s)").wait_for()
        page.locator("#review-caption-0 textarea").wait_for()
        page.locator("#caption-review").screenshot(path=str(ARTIFACTS / "1-grid.png"))

        # Edit in place; Alt+Down goes to the next caption, and leaving the box saves the edit.
        first = page.locator("#review-caption-0 textarea")
        first.fill("sks toy, edited in place")
        first.press("Alt+ArrowDown")
        assert page.evaluate("() => document.activeElement.closest('#review-caption-1') !== null")
        assert wait_for_file(subset / "toy_00.txt", "sks toy, edited in place\n") == "sks toy, edited in place\n"
        page.get_by_text("Saved the caption of").wait_for()
        page.keyboard.press("Alt+ArrowUp")
        assert page.evaluate("() => document.activeElement.closest('#review-caption-0') !== null")

        # Pages.
        page.locator("#review-next").click()
        count.get_by_text("page 2 of 2").wait_for()
        assert page.locator(".review-cell").count() == 2
        page.locator("#review-previous").click()
        count.get_by_text("page 1 of 2").wait_for()

        # Filter: captions lacking the trigger word.
        page.locator("#review-lacks textarea, #review-lacks input").first.fill("sks")
        page.locator("#review-filter").click()
        count.get_by_text("2 image(s)").wait_for()
        assert page.locator(".review-cell").count() == 2
        page.locator("#caption-review").screenshot(path=str(ARTIFACTS / "2-filtered.png"))

        # The panel shows the chosen method's options: Qwen-VL's focus templates, not the basic ones.
        page.locator("#caption-method").get_by_label("qwen-vl").check()
        page.locator("#caption-template").get_by_label("outfit-not-face").wait_for()
        assert not page.locator("#caption-from-name").is_visible()
        page.locator("#caption-panel").screenshot(path=str(ARTIFACTS / "0-qwen-options.png"))
        page.locator("#caption-method").get_by_label("basic").check()

        # Regenerate one with the caption panel's method: basic, from the file name.
        page.locator("#caption-from-name").get_by_label("file").check()
        page.locator(".review-regenerate").first.click()
        assert wait_for_file(subset / "toy_01.txt", "toy\n", timeout_s=90) == "toy\n"
        page.get_by_text("Regenerated.").wait_for(timeout=60_000)
        page.locator("#review-caption-0 textarea").first.wait_for()
        page.wait_for_function("() => { const t = document.querySelector('#review-caption-0 textarea');"
                               " return t && t.value === 'toy'; }", timeout=30_000)
        assert list((subset.parent / ".kiln-caption-backup").rglob("toy_01.txt"))  # the old caption is kept
        page.locator("#caption-review").screenshot(path=str(ARTIFACTS / "3-regenerated.png"))

        # The doctor's caption findings link to the image in the grid.
        page.get_by_text("Dataset doctor: check the dataset before training").click()
        page.get_by_role("textbox", name="Trigger word Every caption").fill("sks")  # the doctor's
        page.get_by_role("button", name="Examine dataset").click()
        link = page.locator("#doctor-report a[href^='#review:']").first
        link.wait_for(timeout=120_000)
        target = link.get_attribute("href").split(":", 1)[1].replace("%20", " ")
        link.click()
        count.get_by_text(f"1 image(s) — only {target}").wait_for()  # the other filters are cleared
        assert page.locator("#review-lacks textarea, #review-lacks input").first.input_value() == ""
        assert page.locator(".review-cell").count() == 1
        page.locator("#caption-review").screenshot(path=str(ARTIFACTS / "4-doctor-link.png"))
    finally:
        page.screenshot(path=str(ARTIFACTS / "last.png"), full_page=True)
        page.close()
