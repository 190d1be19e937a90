"""The repository stands alone: no project file points at design notes kept outside it."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_project_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    outside = "/".join(["shared", ""])  # spelled so that this file does not match itself
    pointing = [name for name in tracked if (REPO / name).is_file()
                and outside in (REPO / name).read_text(encoding="utf-8", errors="ignore")]
    assert pointing == []
    for page in ("architecture.md", "design-decisions.md", "library-facts.md"):
        assert (REPO / "docs" / page).is_file()
