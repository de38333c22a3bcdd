"""Small truths: what the README promises and what pyproject.toml installs agree."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys

import pytest

from tests.conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = pathlib.Path(REPO_ROOT)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# modules of this repository, not distributions
LOCAL = {"pa_mixins", "tests", "examples", "__future__"}


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string ("Foo_Bar>=1" -> "foo-bar")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _lower_bound(requirement: str) -> str:
    return re.search(r">=\s*([\d.]+)", requirement)[1]


def test_readme_supported_versions_agree_with_pyproject() -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(
        r"Supported: Python (\d+)\.(\d+)\u2013(\d+)\.(\d+), torch \u2265 (\d+(?:\.\d+)*) and accelerate \u2265 (\d+(?:\.\d+)*)",
        readme,
    )
    assert found, "README.md no longer states the supported versions in the expected form"
    major, low, high_major, high, torch_min, accelerate_min = found.groups()
    assert major == high_major == "3"

    assert PROJECT["requires-python"] == f">={major}.{low}"
    classified = sorted(
        int(c.rsplit(".", 1)[1])
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert classified == list(range(int(low), int(high) + 1))

    dependencies = {_name(r): r for r in PROJECT["dependencies"]}
    assert _lower_bound(dependencies["torch"]) == torch_min
    assert _lower_bound(dependencies["accelerate"]) == accelerate_min


def _top_level_imports(path: pathlib.Path) -> set[str]:
    """Modules imported by the file's top-level statements (not inside functions, where an
    optional import would sit behind pytest.importorskip)."""
    modules = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _distributions_needed(files: list[pathlib.Path]) -> dict[str, set[str]]:
    """Third-party distribution -> the files that import it."""
    provided_by = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for path in files:
        for module in _top_level_imports(path) - LOCAL - set(sys.stdlib_module_names):
            assert module in provided_by, f"{path.name} imports {module}, which is not installed"
            for distribution in provided_by[module]:
                needed.setdefault(_name(distribution), set()).add(path.name)
    return needed


def _provided(extra: str) -> set[str]:
    requirements = PROJECT["dependencies"] + PROJECT["optional-dependencies"][extra]
    return {_name(r) for r in requirements}


def test_the_examples_extra_installs_what_every_example_imports() -> None:
    needed = _distributions_needed(sorted((ROOT / "examples").glob("*.py")))
    missing = {d: files for d, files in needed.items() if d not in _provided("examples")}
    assert not missing, f"add to the `examples` extra: {missing}"


def test_the_test_extra_installs_what_the_tests_and_the_examples_they_run_import() -> None:
    files = sorted((ROOT / "examples").glob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    needed = _distributions_needed(files)
    missing = {d: files for d, files in needed.items() if d not in _provided("test")}
    assert not missing, f"add to the `test` extra: {missing}"
