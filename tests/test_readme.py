"""Every Python block of the README runs, so the README cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- readme-test: [^>]*-->\n)?```python\n(.*?)```", re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        if match.group(1) is None:  # blocks marked as illustrations are not run
            blocks.append((text[: match.start()].count("\n") + 1, match.group(2)))
    return blocks


def test_the_readme_has_runnable_examples() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=lambda v: str(v)[:12])
def test_readme_block_runs(line: int, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr}"
    assert (tmp_path / "dump" / "data").is_dir()


_INSTALLED_EXTRAS = re.compile(r"pip install [^\n`]*?(?:\.|persistkit)\[([\w,-]+)\]")


def test_every_install_line_names_real_extras_and_every_extra_has_one() -> None:
    named = {
        extra
        for group in _INSTALLED_EXTRAS.findall(README.read_text())
        for extra in group.split(",")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    defined = set(project["optional-dependencies"])
    assert named <= defined, f"the README installs extras pyproject.toml lacks: {named - defined}"
    for_developers = {"dev", "bench"}  # scripts/venv.sh and scripts/bench.sh install these
    assert defined - for_developers <= named, "an extra without an install line in the README"
