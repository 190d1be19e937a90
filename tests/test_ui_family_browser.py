"""The LoRA tab in a real browser (Playwright driving Debian's chromium, as tests/test_ui_browser.py): picking
Flux.1 hides the fields of the DDPM objective and of the UNet and shows the flow-matching ones; picking SD 1.x
does the reverse. Screenshots go to test-artifacts/ui-family/."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_ui_browser import PAGE_TIMEOUT_MS, browser, page_url  # noqa: F401  (the fixtures: one chromium, one app)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui-family"
DDPM_ONLY = ("training.min_snr_gamma", "training.noise_offset", "training.zero_terminal_snr", "model.prediction_type",
             "lora.conv_rank")
FLOW_ONLY = ("training.discrete_flow_shift", "training.weighting_scheme", "training.guidance_scale", "model.t5xxl",
             "lora.train_blocks")


# Whether a field's block is displayed: Gradio drops or hides a component set visible=False; the accordions
# around it are open, so only the family decides.
_SHOWN = ("id => { const e = document.getElementById(id);"
          " return !!e && getComputedStyle(e).display !== 'none' && e.offsetParent !== null; }")


def _shown(page, name: str) -> bool:
    return page.evaluate(_SHOWN, "field-" + name.replace(".", "-"))


def _pick_arch(page, arch: str, note: str) -> None:
    box = page.locator("#field-model-arch input").first
    box.click()
    page.get_by_role("option", name=arch, exact=True).click()
    page.locator("#lora-family").get_by_text(note).first.wait_for()


def _lora_tab(browser, url: str):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("tab", name="LoRA").click()
    return page


def test_picking_a_family_shows_its_fields_and_hides_the_others(browser, page_url):  # noqa: F811
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = _lora_tab(browser, page_url[0])
    try:
        # no preset is shown as chosen while the form holds the defaults (Gradio showed the first one)
        assert page.locator("#field-model-arch input").first.input_value() == "auto"
        assert page.get_by_label("Preset").first.input_value() == ""
        for title in ("Model settings", "Training settings", "LoRA settings"):
            page.get_by_text(title, exact=True).first.click()  # open the folded sections
        _pick_arch(page, "flux", "Flux.1")
        page.wait_for_function(f"() => !({_SHOWN})('field-training-min_snr_gamma')")
        page.screenshot(path=str(ARTIFACTS / "1-flux.png"), full_page=True)
        assert [n for n in DDPM_ONLY if _shown(page, n)] == []
        assert [n for n in FLOW_ONLY if not _shown(page, n)] == []
        _pick_arch(page, "sd15", "SD 1.x")
        page.wait_for_function(f"() => ({_SHOWN})('field-training-min_snr_gamma')")
        page.screenshot(path=str(ARTIFACTS / "2-sd15.png"), full_page=True)
        assert [n for n in FLOW_ONLY if _shown(page, n)] == []
        assert [n for n in DDPM_ONLY if not _shown(page, n)] == []
    finally:
        page.screenshot(path=str(ARTIFACTS / "last-family.png"), full_page=True)
        page.close()
