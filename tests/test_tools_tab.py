"""The Tools tab builds the commands it runs from its form values, and runs them as subprocesses."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ui.tools_tab import (ToolInputError, extract_command, grid_command, inspect_command, merge_command,
                          resize_command, run_tool)


def test_form_values_become_the_cli_arguments():
    assert inspect_command(" a.safetensors ", "") == ["lora", "inspect", "a.safetensors"]
    assert inspect_command("a.safetensors", "base.safetensors") == \
        ["lora", "inspect", "a.safetensors", "--base", "base.safetensors"]
    assert resize_command("a", "b", 8.0, "sv_fro", 0.9, True) == \
        ["lora", "resize", "a", "--out", "b", "--rank", "8", "--dynamic", "sv_fro", "0.9", "--force"]
    assert merge_command("x\n\ny\n", "out", "", "1,0.5", 8) == \
        ["lora", "merge", "x", "y", "--out", "out", "--weights", "1,0.5", "--rank", "8"]
    assert merge_command("x", "out", "ck.safetensors", "", 8) == \
        ["lora", "merge", "x", "--out", "out", "--into", "ck.safetensors"]
    assert extract_command("a", "b", 4, "o") == ["lora", "extract", "--base", "a", "--tuned", "b", "--rank", "4",
                                                  "--out", "o"]
    assert grid_command("jobs/x", "p one\np two", "0.5,1", "1,2", 10) == \
        ["grid", "jobs/x", "--prompts", "p one", "p two", "--strengths", "0.5,1", "--seeds", "1,2", "--steps", "10"]


def test_missing_values_are_named():
    with pytest.raises(ToolInputError, match="LoRA file is empty"):
        inspect_command("  ")
    with pytest.raises(ToolInputError, match="Rank is empty"):
        resize_command("a", "b", None)
    with pytest.raises(ToolInputError, match="Dynamic value is empty"):
        resize_command("a", "b", None, "sv_ratio", None)
    with pytest.raises(ToolInputError, match="LoRA files is empty"):
        merge_command("\n", "out")


def test_tools_run_as_subprocesses(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.ones(2, 8),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.ones(8, 2),
               "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(1.0)}, str(path))
    ok, text = run_tool(inspect_command(str(path)))
    assert ok and "type: lora; 1 modules" in text and "2/1 x1" in text
    ok, text = run_tool(resize_command(str(path), str(path), 1))
    assert not ok and "already exists; pass --force" in text


# --- where tool outputs may go (issue 25: nothing outside the workspace) -------------------------------------
def _workspace_with_job(tmp_path):
    from trainer.jobs import JobManager
    from ui.workspace import Workspace

    workspace = Workspace.for_jobs_dir(tmp_path / "ws" / "jobs")
    manager = JobManager(workspace.jobs_dir)
    job_id = manager.create('method = "lora"\n[model]\nbase = "x"\n', name="dog")
    out = workspace.jobs_dir / job_id / "output"
    save_file({"lora_unet_a.lora_down.weight": torch.ones(1, 2)}, str(out / "dog.safetensors"))
    return workspace, manager, out / "dog.safetensors"


def test_tool_outputs_stay_in_the_workspace_or_beside_a_job_lora(tmp_path):
    from ui.tool_paths import ToolPathError, derived_name, job_loras, tool_output, tools_dir

    workspace, manager, lora = _workspace_with_job(tmp_path)
    assert [path for _, path in job_loras(manager)] == [str(lora)]
    source = [str(lora)]
    # empty: beside the job's LoRA; a bare name: the workspace's lora-tools/; a path inside the workspace: as is
    assert tool_output("", "Output file", workspace, manager, source, derived_name(str(lora), "rank8")) == \
        str(lora.parent / "dog-rank8.safetensors")
    assert tool_output("small.safetensors", "Output file", workspace, manager, source, "x") == \
        str(tools_dir(workspace) / "small.safetensors")
    inside = workspace.root / "mine" / "a.safetensors"
    assert tool_output(str(inside), "Output file", workspace, manager, source, "x") == str(inside)
    # a source that is no job's output gives no licence to write beside it
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(ToolPathError, match=r"^Output file: .*elsewhere/b.safetensors is outside the workspace"):
        tool_output(str(outside / "b.safetensors"), "Output file", workspace, manager, [str(outside / "a")], "x")
    assert tool_output("", "Output file", workspace, manager, [str(outside / "a")], "a-rank8.safetensors") == \
        str(tools_dir(workspace) / "a-rank8.safetensors")
    with pytest.raises(ToolPathError, match="outside the workspace"):  # ../ cannot climb out
        tool_output("../../victim.txt", "Output file", workspace, manager, source, "x")
    link = workspace.root / "link"
    link.symlink_to(outside)
    with pytest.raises(ToolPathError, match="outside the workspace"):  # nor can a link inside it
        tool_output(str(link / "c.safetensors"), "Output file", workspace, manager, source, "x")


def test_replace_ticked_with_an_unrelated_path_outside_is_refused_and_nothing_is_overwritten(tmp_path):
    from gradio_client import Client

    from tests.test_ui import free_port, stop_workers
    from ui import launch_app

    workspace, manager, lora = _workspace_with_job(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    app = launch_app(workspace.jobs_dir, port=free_port(), block=False)
    try:
        client = Client(app.local_url, verbose=False)
        message = client.predict(str(lora), str(victim), 8, "none (fixed rank)", 0.9, True, api_name="/tools_resize")
        assert message.startswith("error: Output file: ") and "is outside the workspace" in message
        message = client.predict([str(lora)], str(victim), "", "", 4, True, api_name="/tools_merge")
        assert "is outside the workspace" in message
        assert victim.read_text() == "keep me"
    finally:
        app.kiln_scheduler.stop()
        stop_workers(workspace.jobs_dir)
        app.close()
