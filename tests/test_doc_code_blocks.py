"""Every full ```python block of README.md and docs/*.md runs (issue 13 part 3).

A block that is a fragment (it uses names the page defines elsewhere, or shows a signature)
is marked by an HTML comment ``<!-- fragment -->`` on the line before its fence, and skipped.
Each block runs on its own, in a fresh namespace, in a temporary working directory.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.conftest import REPO_ROOT

FRAGMENT = "<!-- fragment -->"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str, bool]]:
    root = pathlib.Path(REPO_ROOT)
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(root)}:{line}", match.group(1), before == FRAGMENT))
    return found


BLOCKS = _blocks()


def test_the_pages_have_full_blocks_to_run() -> None:
    assert any(not fragment for _, _, fragment in BLOCKS)


@pytest.mark.parametrize(
    ("where", "code"),
    [(where, code) for where, code, fragment in BLOCKS if not fragment],
    ids=[where for where, _, fragment in BLOCKS if not fragment],
)
def test_a_full_code_block_runs(
    where: str, code: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__main__"})
