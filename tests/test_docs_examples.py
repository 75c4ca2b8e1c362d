"""Every code block in README.md and docs/ is checked here, one mechanism for all of them.

- ```python blocks run as written (a fresh namespace each, in a temporary folder, offline), unless
  the line before the block is ``<!-- not-run: reason -->``. A failing block fails with its file
  and line. A ```text block right after a ```python block is what that block prints: its lines
  must appear in the block's output, in order.
- ```bash / ```console blocks are not run, but every repository path they name (``configs/...``,
  ``recipes/...``, ``tests/...``, ``freeze_policies/...``, ``docs/...``) must exist and every
  ``make TARGET`` must be a target of the Makefile.
- ```yaml and ```json blocks must parse. ```text and ```mermaid blocks (output, diagrams) are
  not checked.
  A block in any other language fails, so no block escapes by its fence.
- README.md's relative links must point at files that exist (the docs' own links are checked by
  ``mkdocs build --strict``, run by ``make docs``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from freeze_policies.policies import registry

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"python", "bash", "console", "yaml", "json", "text", "mermaid"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|recipes|tests|freeze_policies|docs)/[\w./-]*\w)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    before: str  # the last non-blank line before the fence
    end: int = 0  # index of the line after the closing fence
    next_block: Block | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start + 1}: unclosed code block"
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        block = Block(page, start + 1, language, textwrap.dedent("\n".join(body)) + "\n",
                      before.strip(), end=i + 1)
        gap = lines[found[-1].end:start] if found else None
        if found and gap is not None and not any(line.strip() for line in gap):
            found[-1].next_block = block
        found.append(block)
        i += 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def ids(blocks):
    return [block.where for block in blocks]


def test_every_block_has_a_checked_language():
    unknown = [f"{b.where} ```{b.language or '(none)'}" for b in ALL_BLOCKS
               if b.language not in LANGUAGES]
    assert not unknown, (f"code blocks in a language this test does not check (use one of "
                         f"{sorted(LANGUAGES)}): {unknown}")


PYTHON = [b for b in ALL_BLOCKS if b.language == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=ids(PYTHON))
def test_python_block_runs(block, tmp_path, monkeypatch):
    skipped = NOT_RUN.search(block.before)
    if skipped:
        pytest.skip(f"not run: {skipped.group(1)}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # a block that registers a policy registers it for this block only
    monkeypatch.setattr(registry, "_POLICIES", dict(registry._POLICIES))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared machine
    printed = io.StringIO()
    try:
        code = compile(block.code, block.where, "exec")
        with contextlib.redirect_stdout(printed):
            exec(code, {"__name__": "__docs_example__"})
    except BaseException:  # SystemExit too: the block must run to its end
        pytest.fail(f"the python block at {block.where} failed:\n{traceback.format_exc()}",
                    pytrace=False)
    finally:
        torch.set_num_threads(threads)
    shown = block.next_block
    if shown is not None and shown.language == "text":
        expected = [line.rstrip() for line in shown.code.splitlines() if line.strip()]
        got = [line.rstrip() for line in printed.getvalue().splitlines()]
        position = 0
        for line in expected:
            assert line in got[position:], (
                f"{shown.where}: the output shown after the block at {block.where} is not what "
                f"it printed; missing line {line!r}. Printed:\n{printed.getvalue()}")
            position = got.index(line, position) + 1


SHELL = [b for b in ALL_BLOCKS if b.language in ("bash", "console")]
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("block", SHELL, ids=ids(SHELL))
def test_shell_block_names_what_exists(block):
    code = "\n".join(line.split("#", 1)[0] for line in block.code.splitlines())
    missing = [path for path in REPO_PATH.findall(code) if not (ROOT / path).exists()]
    assert not missing, f"{block.where}: the block names files that do not exist: {missing}"
    targets = re.findall(r"\bmake((?:[ \t]+[a-z][\w-]*)+)", code)
    unknown = [t for group in targets for t in group.split() if t not in MAKE_TARGETS]
    assert not unknown, f"{block.where}: no such Makefile target: {unknown}"


YAML = [b for b in ALL_BLOCKS if b.language == "yaml"]


@pytest.mark.parametrize("block", YAML, ids=ids(YAML))
def test_yaml_block_parses(block):
    try:
        yaml.safe_load(block.code)
    except yaml.YAMLError as error:
        pytest.fail(f"{block.where}: the yaml block does not parse: {error}", pytrace=False)


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_this_test_finds_the_blocks_it_checks():
    """A fence the parser missed would be a block nobody checks: count them independently."""
    for page in PAGES:
        fences = sum(1 for line in page.read_text().splitlines() if FENCE.match(line))
        assert fences == 2 * len(blocks_of(page)), f"{page.relative_to(ROOT)}: unbalanced fences"


JSON = [b for b in ALL_BLOCKS if b.language == "json"]


@pytest.mark.parametrize("block", JSON, ids=[b.where for b in JSON])
def test_json_block_parses(block):
    try:
        json.loads(block.code)
    except json.JSONDecodeError as error:
        pytest.fail(f"{block.where}: the json block does not parse: {error}", pytrace=False)
