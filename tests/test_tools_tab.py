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
