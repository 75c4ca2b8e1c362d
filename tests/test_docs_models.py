"""Every python block of docs/models.md runs as written (offline, on CPU)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "models.md").read_text()
BLOCKS = [m.group(2) for m in re.finditer(r"(<!-- not-run: [^\n]*-->\n)?```python\n(.*?)```",
                                          PAGE, re.S) if not m.group(1)]


def test_the_page_has_its_three_examples():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("code", BLOCKS, ids=["moe", "vision-language", "embedding"])
def test_python_block_runs(code):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
