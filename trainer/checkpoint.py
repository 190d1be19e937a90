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


def load_state(path: Path) -> dict:
    # The state holds optimizer and RNG objects, so it is a pickle; Kiln only reads states it wrote itself.
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
