"""The page in a real browser (Playwright driving Debian's chromium, headless): upload images through the file
input, load the demo preset, start the demo job on the tiny model, and wait for the progress bar to move (and a
first preview sample). Screenshots go to test-artifacts/ui-browser/."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import make_dataset
from tests.test_ui import free_port, stop_workers

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui-browser"
# How long a page step may take: waits end as soon as their condition holds, and on this 2-core machine the
# served app shares the CPU with the other test worker's training (an upload was seen to take over 30 s in CI).
PAGE_TIMEOUT_MS = 90_000
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def ensure_chromium() -> str | None:
    """Path of chromium, installing Debian's package when missing; None with the reason printed when it can't."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and this user cannot install it (needs root and apt-get)")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            pytest.skip(f"chromium could not be installed ({' '.join(command)} failed: {done.stderr[-300:]})")
    return CHROMIUM if Path(CHROMIUM).exists() else pytest.skip("apt-get installed no /usr/bin/chromium")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev)")
    executable = ensure_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    os.environ.setdefault("XDG_CONFIG_HOME", str(profile / "config"))
    os.environ.setdefault("XDG_CACHE_HOME", str(profile / "cache"))
    with sync_api.sync_playwright() as playwright:
        # Playwright gives the browser a fresh temporary profile itself (it refuses --user-data-dir).
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    from ui import launch_app

    root = tmp_path_factory.mktemp("browser-workspace")
    app = launch_app(root / "jobs", port=free_port(), block=False)
    try:
        yield app.local_url, root
    finally:
        app.kiln_scheduler.stop()
        stop_workers(root / "jobs")
        app.close()


def test_upload_start_and_watch_the_demo_job(browser, page_url, tmp_path):
    url, root = page_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in make_dataset(tmp_path / "shapes", n=4).iterdir() if p.suffix == ".png")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(url)
        page.get_by_label("Dataset name").fill("browser-shapes")
        page.get_by_label("Instance token").fill("kiln")
        page.get_by_label("Class").fill("shape")
        page.locator("#dataset-upload input[type=file]").set_input_files([str(p) for p in images])
        page.locator("#dataset-upload").get_by_text(images[0].name).first.wait_for()  # upload finished
        page.get_by_role("button", name="Add to dataset").click()
        page.get_by_text("Added 4 image(s)").wait_for()
        page.screenshot(path=str(ARTIFACTS / "1-dataset.png"), full_page=True)
        assert len(list((root / "datasets" / "browser-shapes").rglob("*.png"))) == 4

        page.get_by_role("tab", name="LoRA").click()
        preset = page.get_by_label("Preset").first
        preset.click()
        page.get_by_role("option", name="demo-lora").click()
        page.locator("#lora-preset-load").click()
        page.get_by_text("Loaded preset").first.wait_for()
        dataset_box = page.locator("#field-dataset-dir input").first
        dataset_box.fill(str(root / "datasets" / "browser-shapes"))
        dataset_box.press("Enter")
        page.locator("#field-training-max_steps input").first.fill("60")
        page.get_by_role("button", name="Start LoRA training").click()
        progress = page.locator("#job-progress .kiln-progress[data-state]")
        progress.first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "2-started.png"), full_page=True)
        page.wait_for_function(
            "() => { const p = document.querySelector('#job-progress .kiln-progress');"
            " return p && Number(p.dataset.step) > 0; }", timeout=120_000)
        assert int(progress.first.get_attribute("data-step")) > 0
        # the chart was first drawn before any point existed: its lines and legend must still appear
        page.wait_for_function("() => Array.from(document.querySelectorAll("
                               "'#job-loss-plot .role-legend-label text')).map(t => t.textContent).join() =="
                               " 'loss,smoothed'", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "3-progress.png"), full_page=True)
        # The demo preset samples every 20 steps: the first preview must reach the gallery.
        page.locator("#job-samples img").first.wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "4-sample.png"), full_page=True)
        assert list((root / "jobs").glob("*/samples/*.png"))
    finally:
        page.screenshot(path=str(ARTIFACTS / "last.png"), full_page=True)
        page.close()


def field_box(page, field_id: str):
    """The text input of a schema field (numbers are text boxes too)."""
    return page.locator(f"#{field_id} input, #{field_id} textarea").first


def job_row(page, job_id: str):
    """The visible table cell holding a job id (the table also keeps hidden copies of its cells)."""
    return page.locator("#job-table .cell-wrap:visible", has_text=job_id).first


def test_clicking_a_job_row_selects_it_and_the_loss_axes_are_numbers(browser, page_url):
    from PIL import Image

    from tests.test_ui_artist import _fake_job
    from trainer.jobs.status import append_event

    url, root = page_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    older, older_dir = _fake_job(root, state="cancelled", steps=60)
    (older_dir / "log.txt").write_text("".join(f"log line {i}\n" for i in range(1, 101)))
    for step in (20, 40):
        path = older_dir / "samples" / f"sample-{step}.png"
        Image.new("RGB", (64, 64), (step * 5, 90, 160)).save(path)
        append_event(older_dir, "sample", path=str(path), step=step, prompt="kiln shape, red circle --s 8")
    newer, _ = _fake_job(root, state="done", steps=5)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Jobs").click()
        assert field_box(page, "job-choice").input_value() == ""  # nothing chosen until the person chooses
        job_row(page, older).click()
        page.wait_for_function(f"() => document.querySelector('#job-progress b')?.textContent === '{older}'")
        assert field_box(page, "job-choice").input_value() == older
        labels = page.locator("#job-loss-plot .role-axis-label text")
        labels.first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "5-jobs-loss-chart.png"), full_page=True)
        texts = [t.strip() for t in labels.all_text_contents() if t.strip()]
        numbers = [float(t.replace(",", "")) for t in texts]  # every tick label is a number, not a category
        assert len(numbers) >= 6 and len(numbers) < 40, texts
        x_ticks = [n for n in numbers if n.is_integer() and n >= 5]
        assert x_ticks == sorted(x_ticks) and max(x_ticks) >= 50, texts  # steps on x, in order, up to 60
        page.wait_for_function("() => { const box = document.querySelector('#job-log textarea');"
                               " return box && box.value.endsWith('log line 100') &&"
                               " box.scrollTop + box.clientHeight >= box.scrollHeight - 4; }")  # newest in view
        samples = page.locator("#job-samples")
        samples.get_by_text("step 20: kiln shape, red circle").wait_for()
        captions = samples.get_by_text("kiln shape, red circle").all_text_contents()
        assert captions[:2] == ["step 40: kiln shape, red circle", "step 20: kiln shape, red circle"]  # newest first
        job_row(page, newer).click()
        page.wait_for_function(f"() => document.querySelector('#job-choice input')?.value === '{newer}'")
        page.wait_for_function(f"() => document.querySelector('#job-progress b')?.textContent === '{newer}'")
        assert page.locator("#job-continue").is_disabled()  # a done job has nothing to continue
    finally:
        page.screenshot(path=str(ARTIFACTS / "last-jobs.png"), full_page=True)
        page.close()


def test_errors_name_their_field_and_the_preflight_card_shows_the_steps_first(browser, page_url):
    url, _ = page_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(url)
        page.get_by_role("tab", name="LoRA").click()
        page.get_by_label("Preset").first.click()
        page.get_by_role("option", name="demo-lora").click()  # choosing selects it; Load fills the form
        page.locator("#lora-preset-load").click()
        page.locator("#lora-preset-message").get_by_text("the form holds its settings").wait_for()
        rate = field_box(page, "field-training-learning_rate")
        assert rate.input_value() == "0.001"
        rate.fill("abc")
        rate.press("Tab")
        page.locator("#field-training-learning_rate").get_by_text("Learning rate: 'abc' is not a number").wait_for()
        page.screenshot(path=str(ARTIFACTS / "6-field-error.png"), full_page=False)
        rate.fill("0,001")
        rate.press("Tab")
        # a problem in a folded section opens it and sits by its field, named by its label
        name_box = field_box(page, "field-output-name")
        page.get_by_role("button", name="Check (preflight)").click()
        output_name = page.locator("#field-output-name")
        assert not output_name.is_visible()
        page.get_by_text("Output settings").click()
        name_box.fill("no/folders")
        page.get_by_text("Output settings").click()  # folded again
        page.get_by_role("button", name="Check (preflight)").click()
        output_name.get_by_text("❌ “Output name” = \"no/folders\"").wait_for()  # the label, not the key
        page.get_by_text("“Output name” = \"no/folders\"").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "6b-folded-field-error.png"), full_page=False)
        name_box.fill("kiln-demo-lora")
        page.get_by_role("button", name="Check (preflight)").click()
        card = page.locator("#lora-preflight-card .kiln-preflight-card")
        card.wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "7-preflight-card.png"), full_page=True)
        assert card.inner_text().strip().startswith("200 steps")
        assert page.locator("#field-training-learning_rate").get_by_text("❌").count() == 0
    finally:
        page.screenshot(path=str(ARTIFACTS / "last-form.png"), full_page=True)
        page.close()


def test_an_uploaded_kohya_folder_shows_its_repeats(browser, page_url, tmp_path):
    from tests.test_ui import write_images

    url, root = page_url
    folder = tmp_path / "20_sks toy"
    write_images(folder, 2)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(url)
        page.locator("#dataset-folder-upload input[type=file]").set_input_files(str(folder))
        page.get_by_text("is a Kohya folder").wait_for(timeout=60_000)
        assert field_box(page, "dataset-repeats").input_value() == "20"
        assert page.get_by_label("Instance token").input_value() == "sks"
        assert page.get_by_label("Class").input_value() == "toy"
        page.get_by_label("Dataset name").fill("folder-upload")
        page.get_by_role("button", name="Add to dataset").click()
        page.get_by_text("Added 2 image(s)").wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "8-kohya-folder.png"), full_page=False)
        assert len(list((root / "datasets" / "folder-upload" / "20_sks toy").glob("*.png"))) == 2
    finally:
        page.close()


def test_the_concepts_editor_adds_removes_and_writes_rows(browser, page_url, tmp_path):
    from tests.test_ui import write_images
    from ui.forms import CONCEPTS_TITLE

    url, _ = page_url
    character, style = tmp_path / "my character", tmp_path / "my style"
    write_images(character, 2)
    write_images(style, 1)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    editor = page.locator("#lora-concepts").first

    def box(row: int, key: str):
        return field_box(editor, f"field-dataset-concepts-{row}-{key}")

    def group(row: int):
        return editor.locator(f"#lora-concept-{row}").first

    try:
        page.goto(url)
        page.get_by_role("tab", name="LoRA").click()
        page.get_by_label("Preset").first.click()
        page.get_by_role("option", name="demo-lora").click()
        page.locator("#lora-preset-load").click()
        page.locator("#lora-preset-message").get_by_text("the form holds its settings").wait_for()
        editor.get_by_text(CONCEPTS_TITLE).click()
        assert not group(1).is_visible()  # no concept until one is added
        for row, folder, repeats in ((1, character, "10"), (2, style, "1,5")):
            page.locator("#lora-concept-add").click()
            group(row).wait_for()
            box(row, "dir").fill(str(folder))
            box(row, "dir").press("Enter")
            box(row, "repeats").fill(repeats)
            box(row, "repeats").press("Tab")
        box(1, "caption").fill("zkx character")
        box(2, "repeats").fill("abc")
        box(2, "repeats").press("Tab")  # leaving a number field checks it, in its row
        editor.locator("#field-dataset-concepts-2-repeats").first.get_by_text(
            "Concept 2 · Repeats: 'abc' is not a number").wait_for()
        group(1).get_by_text("More for concept 1").click()  # the rarer keys, folded in each row
        group(1).scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "9-concepts.png"), full_page=False)
        box(2, "repeats").fill("1,5")

        def wait_for_folder(row: int, folder: Path) -> None:
            page.wait_for_function(f"() => document.querySelector('#lora-concepts #field-dataset-concepts-{row}-dir"
                                   f" input')?.value === {str(folder)!r}")

        editor.locator("#lora-concept-2-up").first.click()  # the style goes first, with its values
        wait_for_folder(1, style)
        assert box(1, "repeats").input_value() == "1,5" and box(1, "caption").input_value() == ""
        assert box(2, "caption").input_value() == "zkx character"
        editor.locator("#lora-concept-2-remove").first.click()  # the character goes; the emptied last row hides
        group(2).wait_for(state="hidden")
        wait_for_folder(1, style)
        page.locator("#lora-concept-add").click()  # a row added again comes blank
        group(2).wait_for()
        assert box(2, "dir").input_value() == "" and box(2, "caption").input_value() == ""
        assert box(2, "repeats").input_value() == "1"
        page.get_by_role("button", name="Show TOML").click()
        page.get_by_text("TOML below").first.wait_for()
        page.get_by_text("Full report and resolved TOML").first.click()
        report = page.get_by_label("Preflight / TOML").first
        page.wait_for_function("() => Array.from(document.querySelectorAll('textarea'))"
                               ".some(box => box.value.includes('[[dataset.concepts]]'))")
        text = report.input_value()
        assert text.count("[[dataset.concepts]]") == 1 and f'dir = "{style}"' in text and "repeats = 1.5" in text
        assert str(character) not in text
    finally:
        page.screenshot(path=str(ARTIFACTS / "last-concepts.png"), full_page=True)
        page.close()


def test_the_second_walk_edits_kept_empty_folder_refused_tools_defaults_and_controls_by_state(browser, page_url,
                                                                                            tmp_path):
    """Issue 24's story: a preset list opened and dismissed keeps what was typed (Load over edits asks first);
    Start on an empty image folder is refused with the reason and makes no job; the Tools tab opens with
    defaults a tool accepts; the Evaluation panel has its button; the job controls follow the job's state."""
    import sys
    import time

    from tests.test_ui import write_images
    from tests.test_ui_artist import _fake_job
    from trainer.jobs.status import patch_status

    url, root = page_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    worker = None
    try:
        page.goto(url)
        page.get_by_role("tab", name="LoRA").click()
        message = page.locator("#lora-preset-message")
        assert "Kiln's defaults" in message.inner_text()  # the tab says what it holds, and names no preset
        assert field_box(page, "lora-preset").input_value() == ""
        base, folder = field_box(page, "field-model-base"), field_box(page, "field-dataset-dir")
        base.fill("builtin:tiny-sd15")
        base.press("Enter")
        empty = tmp_path / "empty-folder"
        empty.mkdir()
        folder.fill(str(empty))
        folder.press("Enter")
        preset = page.get_by_label("Preset").first
        preset.click()  # open the list and dismiss it: with Escape...
        page.get_by_role("option", name="demo-lora").wait_for()
        page.keyboard.press("Escape")
        page.locator("#lora-preset-message").click()  # focus leaves the box, so the next click opens the list
        preset.click()  # ... and by clicking away
        page.get_by_role("option", name="demo-lora").wait_for()
        page.locator("#lora-preset-message").click()
        page.wait_for_timeout(1500)  # time for anything that (wrongly) loads to arrive
        assert base.input_value() == "builtin:tiny-sd15" and folder.input_value() == str(empty)
        assert "Loaded" not in message.inner_text()
        preset.click()
        page.get_by_role("option", name="demo-lora").click()  # chosen, not loaded
        message.get_by_text("Press Load to fill it with").wait_for()
        assert base.input_value() == "builtin:tiny-sd15" and folder.input_value() == str(empty)
        page.locator("#lora-preset-load").click()  # the form has edits: it asks first
        message.get_by_text("The form has edits that are not in any preset").wait_for()
        assert base.input_value() == "builtin:tiny-sd15" and folder.input_value() == str(empty)
        page.screenshot(path=str(ARTIFACTS / "10-preset-asks-before-loading.png"), full_page=False)

        jobs_before = sorted(p.name for p in (root / "jobs").iterdir())
        page.get_by_role("button", name="Start LoRA training").click()
        page.get_by_text("Not started: the check refused this job").wait_for(timeout=120_000)
        refusal = page.get_by_text("Not started: the check refused this job").first.locator("xpath=..").inner_text()
        assert "empty-folder" in refusal or "no image" in refusal.lower(), refusal
        assert sorted(p.name for p in (root / "jobs").iterdir()) == jobs_before  # no job was made
        page.screenshot(path=str(ARTIFACTS / "11-empty-folder-refused.png"), full_page=False)
        page.locator("#lora-preset-load").click()  # the second Load goes ahead
        message.get_by_text("Loaded preset").wait_for()
        assert base.input_value() == "builtin:tiny-sd15"  # the demo's own model
        page.locator("#lora-preset-load").click()  # unedited since it was loaded: loads again without asking
        page.wait_for_timeout(2000)
        assert "The form has edits" not in message.inner_text() and "Loaded preset" in message.inner_text()

        page.get_by_role("tab", name="Tools").click()
        assert field_box(page, "tools-grid-steps").input_value() == "20"
        page.get_by_text("Resize", exact=True).first.click()
        assert field_box(page, "tools-resize-rank").input_value() == "8"
        page.screenshot(path=str(ARTIFACTS / "12-tools-defaults.png"), full_page=True)

        running, running_dir = _fake_job(root, state="running", steps=12)
        done, _ = _fake_job(root, state="done", steps=100)
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(running_dir)])
        (running_dir / "worker.pid").write_text(f"{worker.pid}\n")
        patch_status(running_dir, state="running", pid=worker.pid, heartbeat_at=time.time())
        page.get_by_role("tab", name="Jobs").click()
        buttons = {name: page.locator(f"#job-{name}") for name in
                   ("stop", "pause", "unpause", "save-now", "sample-now", "continue")}

        def enabled() -> set[str]:
            return {name for name, button in buttons.items() if button.is_enabled()}

        def settles_to(expected: set[str]) -> set[str]:
            """The enabled set once the page has caught up (a poll answered for the job chosen before may land
            just after the answer for the new one; the next poll, 1.5 s later, sets it right)."""
            deadline = time.monotonic() + 10
            while (found := enabled()) != expected and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            return found

        assert enabled() == set()  # no job chosen: nothing to act on
        job_row(page, running).click()
        assert settles_to({"stop", "pause", "save-now", "sample-now"}) == {"stop", "pause", "save-now", "sample-now"}
        assert buttons["unpause"].inner_text() == "Unpause"
        assert buttons["continue"].inner_text() == "Continue from save"
        page.get_by_text("Evaluation: which checkpoint is best").click()
        page.locator("#job-evaluate").wait_for()
        page.screenshot(path=str(ARTIFACTS / "13-jobs-running-controls.png"), full_page=True)
        # DreamBooth's class images while they are made: the newest few as thumbnails, side by side
        classes = running_dir / "class-images"  # a class folder the job owns (docs/security.md)
        write_images(classes, 4)
        patch_status(running_dir, phase="generating class images", done=4, total=10, class_dir=str(classes),
                     heartbeat_at=time.time())
        thumbnails = page.locator("#job-progress .kiln-class-images img")
        page.wait_for_function("() => document.querySelectorAll('#job-progress .kiln-class-images img').length"
                               " === 4")
        tops = {round(thumbnails.nth(i).bounding_box()["y"]) for i in range(4)}
        assert len(tops) == 1, tops  # one row, not a column
        page.locator("#job-progress").screenshot(path=str(ARTIFACTS / "13b-class-images.png"))
        patch_status(running_dir, state="paused", phase="training", heartbeat_at=time.time())
        assert settles_to({"stop", "unpause"}) == {"stop", "unpause"}
        job_row(page, done).click()
        assert settles_to(set()) == set()
        page.locator("#job-evaluate").click()  # a done job without saved weights: said, no job made
        page.locator("#job-evaluation-progress").get_by_text("has no saved checkpoints to evaluate yet").wait_for()
        page.screenshot(path=str(ARTIFACTS / "14-jobs-done-controls.png"), full_page=True)
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        page.screenshot(path=str(ARTIFACTS / "last-walk.png"), full_page=True)
        page.close()
