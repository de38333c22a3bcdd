"""The documentation site builds with MkDocs, warnings as errors (what ``tox -e docs`` runs).

Skipped where the ``docs`` extra is not installed (CI installs it). A strict build fails on
a broken link or anchor between pages, a page of docs/ missing from the nav, and a
docstring that mkdocstrings cannot render.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(
    tmp_path: pathlib.Path,
) -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='needs the docs extra: pip install -e ".[docs]"')
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    pages = sorted(p.stem for p in (pathlib.Path(REPO_ROOT) / "docs").glob("*.md"))
    for page in pages:
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.exists(), page

    api = (site / "api" / "index.html").read_text()
    for name in (
        "pa_mixins.trainer.Trainer",
        "pa_mixins.mixins.TrainingLoopMixin",
        "pa_mixins.callbacks.TrainerCallback",
        "pa_mixins.finetuning.ModelFreezer",
    ):
        assert f'id="{name}"' in api, name
    assert 'id="pa_mixins.trainer.BaseTrainer"' not in api  # documented once, under base
