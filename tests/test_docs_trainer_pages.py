"""The pages of the ready-made trainers (docs/trainers/) are generated from the code by
docs/scripts/trainer_pages.py and are fresh: regenerated into a temporary folder, they equal
the committed ones, and the site's nav lists each of them."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pa_mixins.trainer
from tests.conftest import REPO_ROOT

DOCS = pathlib.Path(REPO_ROOT) / "docs"


def _script() -> ModuleType:
    path = DOCS / "scripts" / "trainer_pages.py"
    spec = importlib.util.spec_from_file_location("trainer_pages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trainer_pages_are_fresh(tmp_path: pathlib.Path) -> None:
    script = _script()
    written = script.write_pages(tmp_path)
    committed = sorted(p.name for p in (DOCS / "trainers").glob("*.md"))
    assert sorted(p.name for p in written) == committed
    for path in written:
        assert path.read_text() == (DOCS / "trainers" / path.name).read_text(), (
            f"docs/trainers/{path.name} is stale: run python docs/scripts/trainer_pages.py"
        )


def test_every_ready_made_trainer_has_a_page_in_the_nav() -> None:
    script = _script()
    nav = (pathlib.Path(REPO_ROOT) / "mkdocs.yml").read_text()
    for name in script.TRAINERS:
        assert isinstance(getattr(pa_mixins.trainer, name), type)
        assert f"trainers/{name}.md" in nav, name


def test_a_page_lists_the_mro_and_the_class_that_supplies_a_hook() -> None:
    page = _script().render("MinimalTrainer")
    mro = [c.__name__ for c in pa_mixins.trainer.MinimalTrainer.__mro__[:-1]]
    listed = [line.split("`")[1] for line in page.splitlines() if line[:1].isdigit()]
    assert listed == mro
    assert "| `scheduler_step()` |" not in page  # MinimalTrainer has no scheduler
    assert "| `calculate_train_batch_loss(batch)` | TrainingLoopMixin | — |" in page
