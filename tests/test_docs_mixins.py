"""The worked examples of docs/mixins.md run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.conftest import REPO_ROOT

MIXINS_DOC = pathlib.Path(REPO_ROOT) / "docs" / "mixins.md"


def _marked_blocks(path: pathlib.Path) -> dict[str, str]:
    """The ```python blocks preceded by ``<!-- test: NAME -->``, by name."""
    pattern = re.compile(r"<!-- test: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)
    return dict(pattern.findall(path.read_text()))


def test_the_mixins_page_marks_its_worked_example() -> None:
    assert "stateful-mixin" in _marked_blocks(MIXINS_DOC)


@pytest.mark.parametrize("name", sorted(_marked_blocks(MIXINS_DOC)))
def test_worked_example_runs(name: str) -> None:
    code = _marked_blocks(MIXINS_DOC)[name]
    exec(compile(code, f"{MIXINS_DOC}:{name}", "exec"), {"__name__": f"docs_{name}"})
