"""Every Python block of this plug-in's README runs, so the README cannot rot.

Named apart from the root project's tests/test_readme.py: the two folders are not
packages, so pytest needs distinct module names.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [
        (text[: match.start()].count("\n") + 1, match.group(1)) for match in _BLOCK.finditer(text)
    ]


def test_the_readme_has_a_runnable_example() -> None:
    assert len(python_blocks()) >= 1


@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=lambda v: str(v)[:12])
def test_readme_block_runs(line: int, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr}"
    assert (tmp_path / "dump" / "state.db").is_file()
