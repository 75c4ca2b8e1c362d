"""README code blocks that are complete programs run here as they are written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block_containing(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"README has {len(found)} python blocks containing {marker!r}"
    return found[0]


@pytest.mark.parametrize("marker", ["AutoModelForAudioClassification"])
def test_readme_example_runs(marker, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = python_block_containing(marker)
    exec(compile(code, f"README.md ({marker})", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    # the block's own asserts checked the weights; its printed table is the README's
    after = README.read_text().split(code, 1)[1]
    shown = re.match(r"```\n```\n(.*?)```", after, flags=re.S)
    assert shown, "the block is followed by the output it prints"
    assert shown.group(1).strip() in printed
