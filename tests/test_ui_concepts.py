"""The concepts editor of the method forms: [[dataset.concepts]] rows built, written, checked, loaded back,
named when wrong, removed and moved. Driven through gradio_client against the served app where the API reaches
(load, import, Show TOML, Check, Start); the private row buttons through the functions they call."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.test_ui import ROOT, form_index, served, write_images

__all__ = ["served"]  # the served app fixture, shared with tests/test_ui.py


def demo_values(client) -> list:
    return list(client.predict("shipped:demo-lora", api_name="/lora_load_preset")[1:])


def concept_index(method: str, row: int, key: str) -> int:
    """Where field `key` of concept row `row` (from 0) sits in the form's values."""
    from ui.concepts import CONCEPT_FIELDS, ROW_SIZE
    from ui.forms import form_fields

    return len(form_fields(method)) + row * ROW_SIZE + [f.key for f in CONCEPT_FIELDS].index(key)


def set_concept(values: list, row: int, method: str = "lora", **keys) -> list:
    for key, value in keys.items():
        values[concept_index(method, row, key)] = value
    return values


def concept_part(method: str, values: list) -> list:
    from ui.forms import split_values

    return split_values(method, values)[1]


def two_concepts(client, tmp_path: Path) -> tuple[list, Path, Path]:
    """The demo preset with its image folder emptied and two concepts: a character 10 times, a style 1.5 times."""
    character, style = tmp_path / "my character", tmp_path / "my style"
    write_images(character, 3)
    write_images(style, 2)
    values = demo_values(client)
    values[form_index("lora", "dataset.dir")] = ""
    set_concept(values, 0, dir=str(character), repeats="10", caption="zkx character")
    set_concept(values, 1, dir=str(style), repeats="1,5", loss_weight="0,5", flip="on", caption_prefix="zkx style",
                caption_extension=".caption")
    return values, character, style


def test_two_concepts_are_written_as_tables_that_the_check_accepts(served, tmp_path):
    from trainer.config import load_job

    client, _ = served
    values, character, style = two_concepts(client, tmp_path)
    message, toml_text, _ = client.predict(*values, api_name="/lora_toml")
    assert message.startswith("TOML below"), message
    data = tomllib.loads(toml_text)
    first, second = data["dataset"]["concepts"]
    assert data["dataset"]["dir"] == ""
    assert (first["dir"], first["repeats"], first["caption"], first["loss_weight"]) == (
        str(character), 10.0, "zkx character", 1.0)
    assert "flip" not in first and "caption_extension" not in first  # left "as in Dataset settings"
    assert (second["dir"], second["repeats"], second["loss_weight"], second["flip"]) == (str(style), 1.5, 0.5, True)
    assert (second["caption_prefix"], second["caption_extension"]) == ("zkx style", ".caption")
    job = tmp_path / "job.toml"
    job.write_text(toml_text)
    cfg = load_job(job)  # the config loader takes it as it is
    assert [c["repeats"] for c in cfg.dataset.concepts] == [10.0, 1.5]

    message, report, card = client.predict(*values, api_name="/lora_check")
    assert message.startswith("✅"), report  # `trainer check` (trainer.inputs + the scanner) accepts it
    assert "images: 5   with repeats: 33" in report  # 3 x 10 + 2 x 1.5
    assert "Concept 1 (my character): 3 images × 10 repeats" in card
    assert "Concept 2 (my style): 2 images × 1.5 repeats" in card
    assert card.index("steps</b>") < card.index("Concept 1") < card.index("Time:")


def test_a_job_with_concepts_loads_back_into_the_same_rows(served, tmp_path):
    from gradio_client import handle_file

    from trainer.config import load_job
    from ui.forms import values_from_job

    client, _ = served
    values, character, style = two_concepts(client, tmp_path)
    _, toml_text, _ = client.predict(*values, api_name="/lora_toml")
    job = tmp_path / "two concepts.toml"
    job.write_text(toml_text)
    imported = client.predict(handle_file(str(job)), api_name="/lora_import")
    message, loaded = imported[0], list(imported[1:-1])
    assert "the settings imported from `two concepts.toml`" in message
    assert "no field in this form" not in message and "dataset.concepts" not in message  # no old warning
    # the rows show what was typed, numbers as the form writes them ("1,5" is 1.5)
    expected = set_concept(list(values), 1, repeats="1.5", loss_weight="0.5")
    assert concept_part("lora", loaded) == concept_part("lora", expected)
    assert loaded[concept_index("lora", 1, "flip")] == "on"
    assert loaded[concept_index("lora", 0, "flip")] == "as in Dataset settings"
    assert loaded[concept_index("lora", 2, "dir")] == ""  # the rows after them stay blank
    assert concept_part("lora", values_from_job("lora", load_job(job))) == concept_part("lora", loaded)
    # Save as keeps them in a preset, and loading the preset fills the rows again
    saved = client.predict("two-concepts", *loaded, api_name="/lora_save_preset_as")[0]
    assert saved.startswith("Saved new preset"), saved
    again = client.predict("user:two-concepts", api_name="/lora_load_preset")
    assert "no field in this form" not in again[0]
    assert concept_part("lora", list(again[1:])) == concept_part("lora", expected)


def test_a_bad_repeats_value_is_named_by_its_row_and_field_and_loses_nothing(served, tmp_path):
    client, root = served
    values, _, _ = two_concepts(client, tmp_path)
    set_concept(values, 1, repeats="abc")
    message, report, _ = client.predict(*values, api_name="/lora_check")
    assert "Concept 2 · Repeats: 'abc' is not a number" in message and report == ""
    set_concept(values, 1, repeats="0")
    message, _, _ = client.predict(*values, api_name="/lora_toml")
    assert "Concept 2 · Repeats: 0 is not allowed (must be > 0 and <= 1000)" in message
    set_concept(values, 1, repeats="2", caption_extension="caption")  # a problem the config finds, by label too
    message, _, _ = client.predict(*values, api_name="/lora_toml")
    assert "Concept 2 · Caption extension = \"caption\" is not valid (must be a file extension" in message
    set_concept(values, 1, caption_extension="", dir="")  # a row with settings but no folder
    jobs_before = sorted((root / "jobs").iterdir())
    started = client.predict(*values, api_name="/lora_start")[0]
    assert started.startswith("Not started") and "Concept 2 · Folder: empty; choose the concept's folder" in started
    assert sorted((root / "jobs").iterdir()) == jobs_before


def test_a_concept_problem_sits_by_its_field_in_its_row():
    import gradio as gr

    from ui.concepts import MAX_CONCEPTS
    from ui.forms import FormError, build_form, job_from_values, values_from_job
    from trainer.config import load_job

    with gr.Blocks():
        form = build_form("dreambooth", {})
    cfg = load_job(ROOT / "presets" / "sd15-dreambooth.toml", complete=False)
    values = set_concept(values_from_job("dreambooth", cfg), 2, "dreambooth", dir="/data/style", repeats="1.2.3",
                         random_crop="off")
    with pytest.raises(FormError) as caught:
        job_from_values("dreambooth", values, base_dir=str(ROOT))
    assert caught.value.by_field == {"dataset.concepts[3].repeats": "Concept 3 · Repeats: '1.2.3' is not a number "
                                                                   "(examples: 0.0001, 1e-4, 0,0001)"}
    updates = form.feedback(caught.value.by_field, {})
    assert len(updates) == len(form.feedback_outputs)
    repeats = updates[concept_index("dreambooth", 2, "repeats")]
    assert repeats["info"].startswith("❌ Concept 3 · Repeats: '1.2.3'") and repeats["elem_classes"]
    assert not any(isinstance(u, dict) and "value" in u for u in updates)  # what was typed stays
    others = [u for i, u in enumerate(updates[:len(form.components)]) if i != concept_index("dreambooth", 2, "repeats")]
    assert not any(u["elem_classes"] for u in others)
    accordion, folds = updates[-MAX_CONCEPTS - 1], updates[-MAX_CONCEPTS:]
    assert accordion.open is True and all(fold == gr.skip() for fold in folds)  # repeats is in the row itself
    # a problem of a folded key opens its row's fold too
    folded = form.feedback({"dataset.concepts[2].caption_extension": "Concept 2 · Caption extension = \"x\""}, {})
    assert [fold == gr.skip() for fold in folded[-MAX_CONCEPTS:]] == [True, False] + [True] * (MAX_CONCEPTS - 2)
    # every concept key of the schema has its field in each row; an override offers "as in Dataset settings"
    from ui.concepts import CONCEPT_FIELDS

    row = form.components[concept_index("dreambooth", 0, "dir"):concept_index("dreambooth", 1, "dir")]
    assert [c.label for c in row] == [f.label for f in CONCEPT_FIELDS]
    switch = form.components[concept_index("dreambooth", 0, "flip")]
    assert isinstance(switch, gr.Dropdown) and switch.value == "as in Dataset settings"


def test_removing_or_moving_a_row_changes_the_toml(served, tmp_path):
    from ui.concepts import move_row, remove_row

    client, _ = served
    values, character, style = two_concepts(client, tmp_path)
    third = tmp_path / "third"
    write_images(third, 1)
    set_concept(values, 2, dir=str(third), repeats="3")
    count = len(values) - len(concept_part("lora", values))

    def dirs(values: list) -> list[str]:
        _, toml_text, _ = client.predict(*values, api_name="/lora_toml")
        return [table["dir"] for table in tomllib.loads(toml_text)["dataset"].get("concepts", [])]

    assert dirs(values) == [str(character), str(style), str(third)]
    removed = values[:count] + remove_row(concept_part("lora", values), 0)  # the first row's Remove
    assert dirs(removed) == [str(style), str(third)]
    assert removed[concept_index("lora", 0, "repeats")] == "1,5"  # the rows below moved up as typed
    moved = removed[:count] + move_row(concept_part("lora", removed), 1, -1, shown=2)  # the second row's ↑
    assert dirs(moved) == [str(third), str(style)]
    assert move_row(concept_part("lora", moved), 1, 1, shown=2) == concept_part("lora", moved)  # nothing below
    emptied = moved[:count] + remove_row(remove_row(concept_part("lora", moved), 0), 0)
    assert dirs(emptied) == []  # an empty editor: the single image folder, as before
    blank_first = set_concept(list(emptied), 1, dir=str(style))  # a blank row above a filled one is no concept
    assert dirs(blank_first) == [str(style)]


def test_an_empty_editor_keeps_the_image_folder_alone(served):
    client, _ = served
    values = demo_values(client)
    _, toml_text, _ = client.predict(*values, api_name="/lora_toml")
    assert "[[dataset.concepts]]" not in toml_text
    assert tomllib.loads(toml_text)["dataset"]["dir"].endswith("demo-dataset")


def test_more_concepts_than_rows_are_said_and_the_rows_hold_the_first(served, tmp_path):
    from gradio_client import handle_file

    from ui.concepts import MAX_CONCEPTS

    client, _ = served
    many = tmp_path / "many.toml"
    many.write_text('method = "lora"\n[model]\nbase = "builtin:tiny-sd15"\n' + "".join(
        f'[[dataset.concepts]]\ndir = "{tmp_path}/c{n}"\nrepeats = {n + 1}\n' for n in range(MAX_CONCEPTS + 1)))
    imported = client.predict(handle_file(str(many)), api_name="/lora_import")
    assert f"`dataset.concepts` has {MAX_CONCEPTS + 1} tables and the form holds the first {MAX_CONCEPTS}" \
        in imported[0] and "trainer run FILE" in imported[0]
    assert imported[1 + concept_index("lora", MAX_CONCEPTS - 1, "repeats")] == str(MAX_CONCEPTS)


def test_the_card_lists_each_concept_and_the_class_images():
    from trainer.config import parse_job
    from ui.preflight_card import card_html

    cfg = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"concepts": [
        {"dir": "/d/hero", "repeats": 10}, {"dir": "/d/look", "repeats": 0.5}, {"dir": "/d/reg",
                                                                                 "is_regularization": True}]}})
    report = ("images: 12   with repeats: 42\n  hero: 4 images x 10.0 repeats\n  look: 8 images x 0.5 repeats\n"
              "class images: 6 in /d/reg   class samples per epoch: 42 (paired with as many subject samples)\n"
              "steps per epoch: 42\ntotal steps: 84   epochs: 2\n")
    card = card_html(cfg, True, report)
    assert "Concept 1 (hero): 4 images × 10 repeats" in card and "Concept 2 (look): 8 images × 0.5 repeats" in card
    assert "Class images: 6, paired with as many subject samples" in card
    plain = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "/d/hero"}})
    assert "kiln-card-concept" not in card_html(plain, True, report)  # no concepts, no list
