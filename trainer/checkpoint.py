"""Resumable training states: one folder per saved step, written aside and renamed into place, so a crash
at any moment leaves either the previous states or a complete new one, never a half state."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from .atomic import remove_leftovers, write_folder_atomically

STATE_RE = re.compile(r"^step(\d{8})$")
STATE_FILE = "state.pt"


def state_name(step: int) -> str:
    return f"step{step:08d}"


def list_states(state_dir: Path) -> list[tuple[int, Path]]:
    """Complete states, oldest first. Folders being written (hidden temporary names) are not states."""
    if not state_dir.is_dir():
        return []
    found = []
    for p in state_dir.iterdir():
        m = STATE_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_state(state_dir: Path) -> Path | None:
    states = list_states(state_dir)
    return states[-1][1] if states else None


def save_state(state_dir: Path, step: int, payload: dict, keep: int) -> Path:
    remove_leftovers(state_dir)  # left by a run killed while saving

    def write(folder: Path) -> None:
        # Through a Python file: torch.save given a path reports a full disk as a bare "file write failed".
        with open(folder / STATE_FILE, "wb") as out:
            torch.save(payload, out)

    # The same step may be saved twice (e.g. "save now" at a scheduled step): the newer state replaces it.
    final = write_folder_atomically(state_dir / state_name(step), write, replace=True)
    for _, old in list_states(state_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def prune_step_files(output_dir: Path, name: str, keep: int, step: int, spare: int | None = None) -> list[Path]:
    """Delete all but the newest `keep` steps' checkpoint files that Kiln names NAME-stepNNNNNNNN.safetensors
    (with their -ema and .pt companions) up to `step`, the one just saved; returns what was deleted. Nothing
    else matches: not the final NAME.safetensors, not other names, not folders, not later steps (this run
    has not written them, so they are not its own), not the step `spare` (the best by validation)."""
    pattern = re.compile(rf"^{re.escape(name)}-step(\d{{8}})(-ema)?\.(safetensors|pt)$")
    by_step: dict[int, list[Path]] = {}
    for p in output_dir.iterdir() if output_dir.is_dir() else ():
        m = pattern.match(p.name)
        if m and p.is_file() and int(m.group(1)) <= step:
            by_step.setdefault(int(m.group(1)), []).append(p)
    deleted = []
    for old in sorted(by_step)[:-keep] if keep > 0 else []:
        if old == spare:
            continue
        for p in sorted(by_step[old]):
            p.unlink()
            deleted.append(p)
    return deleted


def remove_output_leftovers(output_dir: Path, name: str) -> list[Path]:
    """Delete the temporary files and folders that a killed save of this job's outputs left in `output_dir`
    (.NAME[-stepNNNNNNNN][-ema].safetensors.XXXXXXXX.tmp, the .pt and diffusers-folder ones alike); returns
    them. Only this job's names match: another job saving beside it keeps its temporaries."""
    pattern = re.compile(rf"^\.{re.escape(name)}(-step\d{{8}})?(-ema)?(\.(safetensors|pt))?\.[a-z0-9_]{{8}}\.tmp$")
    removed = []
    for p in output_dir.iterdir() if output_dir.is_dir() else ():
        if pattern.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def final_step(path: Path) -> int:
    """The step a weights file was saved at, from its metadata (Kohya's ss_steps, or kiln_steps); 0 if none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # safetensors raises its own error types for a damaged header; the step is only shown
        return 0
    steps = metadata.get("ss_steps") or metadata.get("kiln_steps") or ""
    return int(steps) if steps.isdigit() else 0


def load_state(path: Path) -> dict:
    # The state holds optimizer and RNG objects, so it is a pickle; Kiln only reads states it wrote itself.
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
