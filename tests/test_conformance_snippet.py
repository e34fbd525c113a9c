"""The conformance snippet users copy runs as shown, under pytest-asyncio's default (strict) mode.

The snippet is docs/conformance.md's (the README shows the same), ``MyBackend(...)`` becomes
``MemoryBackend()``, and it runs in a fresh pytest whose configuration is empty: none of this
repository's settings (``asyncio_mode = "auto"``) reach it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from persistkit.testing import BackendConformance

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "conformance.md"
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def conformance_snippet(document: Path) -> str:
    snippets = [
        code for code in _PYTHON_BLOCK.findall(document.read_text()) if "BackendConformance" in code
    ]
    assert len(snippets) == 1, f"{document.name} should show one conformance snippet"
    return snippets[0]


def test_the_readme_shows_the_snippet_of_the_conformance_page() -> None:
    assert conformance_snippet(ROOT / "README.md") == conformance_snippet(DOCUMENT)


def test_the_snippet_runs_the_whole_suite_under_strict_mode(tmp_path: Path) -> None:
    snippet = conformance_snippet(DOCUMENT)
    assert "MyBackend(...)" in snippet
    code = "from persistkit import MemoryBackend\n" + snippet.replace(
        "MyBackend(...)", "MemoryBackend()"
    )
    (tmp_path / "test_my_backend.py").write_text(code)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # pytest-asyncio's defaults: strict mode
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "asyncio: mode=Mode.STRICT" in result.stdout
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {case.get("name"): [child.tag for child in case] for case in cases}
    suite = {name for name in dir(BackendConformance) if name.startswith("test_")}
    assert set(outcomes) == suite  # every test of the suite ran
    skipped = {name for name, tags in outcomes.items() if "skipped" in tags}
    # MemoryBackend keeps no history: only the history tests may skip, and they say so.
    assert all("history" in name for name in skipped)
    assert len(skipped) < len(suite) / 10
