"""The dataset doctor panel through the running app (gradio_client): findings shown, nothing moved without the
confirmation, duplicates moved aside with it."""
from __future__ import annotations

from tests.test_doctor import clean_dataset, textured
from tests.test_ui import served  # noqa: F401  (the running app fixture)


def test_doctor_panel_finds_and_moves_duplicates_only_when_confirmed(served):  # noqa: F811
    client, root = served
    dataset = clean_dataset(root / "datasets" / "doctor-set", n=4)
    folder = dataset / "5_kiln toy"
    textured(1).save(folder / "again.png")  # a duplicate of img_01
    (folder / "img_02.txt").write_text("red, toy")  # no trigger

    report = client.predict("doctor-set", "kiln", 256, api_name="/dataset_doctor")
    assert "near-duplicates" in report and "again.png" in report and "img_01.png" in report
    assert "do not contain the trigger word 'kiln'" in report and "img_02.png" in report

    refused = client.predict("doctor-set", "kiln", 256, False, api_name="/dataset_move_duplicates")
    assert "nothing was moved" in refused
    assert len(list(folder.glob("*.png"))) == 5

    moved = client.predict("doctor-set", "kiln", 256, True, api_name="/dataset_move_duplicates")
    assert "moved 1 file(s) aside" in moved
    assert len(list(folder.glob("*.png"))) == 4
    assert len(list((dataset.with_name("doctor-set-duplicates") / "5_kiln toy").glob("*.png"))) == 1

    assert client.predict("", "kiln", 256, api_name="/dataset_doctor") == "Choose a dataset first."


def test_evaluation_view_reads_what_evaluate_wrote(tmp_path):
    from PIL import Image

    from ui.evaluation_panel import evaluation_view

    text, charts = evaluation_view(tmp_path)
    assert "No evaluation yet" in text and f"trainer evaluate {tmp_path}" in text and charts == []
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "metrics.md").write_text("| checkpoint | FID |\n| final **(best)** | 3.2 |\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "evaluation" / "fid.png")
    text, charts = evaluation_view(tmp_path)
    assert "final **(best)**" in text and charts == [(str(tmp_path / "evaluation" / "fid.png"), "FID")]


def test_job_page_shows_the_evaluation(served):  # noqa: F811
    from trainer.jobs import JobManager

    client, root = served
    manager = JobManager(root / "jobs")
    job_id = manager.create('method = "lora"\n[model]\nbase = "builtin:tiny-sd15"\n', name="evaluated")
    assert "No evaluation yet" in client.predict(job_id, api_name="/job_evaluation")[0]
    folder = root / "jobs" / job_id / "evaluation"
    folder.mkdir()
    (folder / "metrics.md").write_text("| checkpoint | FID (CLIP) |\n|---|---|\n| final **(best)** | 1.5 |\n")
    table, charts = client.predict(job_id, api_name="/job_evaluation")
    assert "final **(best)**" in table and charts == []
    assert client.predict("../escape", api_name="/job_evaluation")[0].startswith("❌")
