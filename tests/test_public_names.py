"""Public names (issue 9 point 7) and the package's import graph (point 4).

* every public name of the submodules is importable from the top level, as the same object,
  and listed in ``pa_mixins.__all__``; the pytorch-accelerated module paths still import;
* ``import pa_mixins`` has no side effect;
* the modules of the package import each other without a circle, and each can be imported
  first.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys
import textwrap

import pytest

import pa_mixins
from tests.conftest import REPO_ROOT, launch_env

PACKAGE = pathlib.Path(pa_mixins.__file__).resolve().parent

#: the submodules whose public names (their ``__all__``) are also top-level names
SUBMODULES = (
    "pa_mixins.base",
    "pa_mixins.trainer",
    "pa_mixins.callbacks",
    "pa_mixins.schedulers",
    "pa_mixins.finetuning",
    "pa_mixins.tracking",
    "pa_mixins.run_config",
    "pa_mixins.utils",
    "pa_mixins.placeholders",
    "pa_mixins.mixins",
    "pa_mixins.mixins.accelerate",
    "pa_mixins.mixins.checkpointing",
    "pa_mixins.mixins.mixed_precision",
)

#: module paths of pytorch-accelerated that scripts import
PYTORCH_ACCELERATED_PATHS = (
    "pa_mixins.trainer",
    "pa_mixins.callbacks",
    "pa_mixins.tracking",
    "pa_mixins.run_config",
    "pa_mixins.finetuning",
    "pa_mixins.schedulers",
    "pa_mixins.schedulers.scheduler_base",
    "pa_mixins.schedulers.cosine_scheduler",
    "pa_mixins.schedulers.wsd_scheduler",
    "pa_mixins.utils",
)

#: names the issue lists as needing a top-level import
NAMED_IN_THE_ISSUE = (
    "TrainerCallback",
    "ModelFreezer",
    "ModelEma",
    "RunHistory",
    "TrainerWithTimmScheduler",
    "CosineLrScheduler",
    "SaveTrainingStateCallback",
    "EarlyStoppingCallback",
)


# ----------------------------------------------------------------------------------------------
# Top-level names
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_name", SUBMODULES)
def test_every_public_name_of_a_submodule_is_a_top_level_name(module_name: str) -> None:
    module = importlib.import_module(module_name)
    public = getattr(module, "__all__", None)
    assert public, f"{module_name} has no __all__"
    missing = [name for name in public if name not in pa_mixins.__all__]
    assert not missing, f"add to pa_mixins/__init__.py and its __all__: {missing}"
    different = [name for name in public if getattr(pa_mixins, name) is not getattr(module, name)]
    assert not different, f"pa_mixins.<name> is not {module_name}.<name> for {different}"


def test_the_names_the_issue_lists_import_from_the_top_level() -> None:
    namespace: dict[str, object] = {}
    exec(f"from pa_mixins import {', '.join(NAMED_IN_THE_ISSUE)}", namespace)
    assert all(name in namespace for name in NAMED_IN_THE_ISSUE)


def test_every_name_of_all_is_importable() -> None:
    assert len(set(pa_mixins.__all__)) == len(pa_mixins.__all__), "a name is listed twice"
    missing = [name for name in pa_mixins.__all__ if not hasattr(pa_mixins, name)]
    assert not missing, missing
    namespace: dict[str, object] = {}
    exec("from pa_mixins import *", namespace)
    assert set(pa_mixins.__all__) <= set(namespace)


def test_the_top_level_exports_nothing_public_that_all_omits() -> None:
    # a public class or function imported into __init__ but not listed is a forgotten name
    unlisted = [
        name
        for name, value in vars(pa_mixins).items()
        if not name.startswith("_")
        and name not in pa_mixins.__all__
        and not isinstance(value, type(pa_mixins))  # the submodules themselves
    ]
    assert not unlisted, unlisted


@pytest.mark.parametrize("module_name", PYTORCH_ACCELERATED_PATHS)
def test_the_pytorch_accelerated_module_paths_still_import(module_name: str) -> None:
    importlib.import_module(module_name)


def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (nothing imported yet); it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=launch_env(use_cpu=False),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_importing_the_package_has_no_side_effect() -> None:
    # In a fresh interpreter where the libraries pa_mixins uses are already imported (accelerate
    # adds a warnings filter of its own): the random generators, torch's global settings,
    # logging, signal handlers, warnings filters and the environment are as they were before.
    script = textwrap.dedent(
        """
        import logging, os, random, signal, warnings
        import torch
        import accelerate, accelerate.data_loader, accelerate.state, accelerate.utils

        def snapshot():
            root = logging.getLogger()
            return (
                random.getstate(),
                torch.get_rng_state().tolist(),
                torch.get_num_threads(),
                torch.are_deterministic_algorithms_enabled(),
                torch.get_default_dtype(),
                root.level,
                list(root.handlers),
                sorted(logging.root.manager.loggerDict),
                signal.getsignal(signal.SIGINT),
                signal.getsignal(signal.SIGTERM),
                list(warnings.filters),
                dict(os.environ),
            )

        before = snapshot()
        import pa_mixins
        after = snapshot()
        names = ("random", "torch rng", "threads", "deterministic", "dtype", "log level",
                 "log handlers", "loggers", "SIGINT", "SIGTERM", "warnings", "environment")
        changed = [n for n, b, a in zip(names, before, after) if b != a]
        print("CHANGED", changed)
        """
    )
    done = _run_python(script)
    assert "CHANGED []" in done.stdout, done.stdout


def test_importing_the_package_does_not_import_accelerate() -> None:
    # Start-up (issue 11): accelerate costs about a tenth of ``import torch``; it is imported
    # when the first Accelerator is made. notebook_launcher still resolves to Accelerate's.
    script = textwrap.dedent(
        """
        import sys
        import pa_mixins, pa_mixins.mixins, pa_mixins.callbacks, pa_mixins.trainer
        print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] == "accelerate"))
        import accelerate
        print("SAME", pa_mixins.notebook_launcher is accelerate.notebook_launcher)
        """
    )
    done = _run_python(script)
    assert "LOADED []" in done.stdout, done.stdout
    assert "SAME True" in done.stdout, done.stdout


# ----------------------------------------------------------------------------------------------
# The import graph
# ----------------------------------------------------------------------------------------------


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name (packages as their ``__init__``)."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: at the top level, in
    ``if`` / ``try`` / ``with`` blocks and class bodies; not in functions, not under
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                found.append(statement)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            elif isinstance(statement, ast.If) and _is_type_checking(statement.test):
                visit(statement.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(statement, field, None) or []
                    for child in children:
                        if isinstance(child, ast.stmt):
                            visit([child])
                        elif hasattr(child, "body"):  # except handlers, match cases
                            visit(child.body)

    visit(tree.body)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """module -> the package modules it runs (directly) when imported.

    ``import a.b.c`` and ``from a.b.c import x`` run ``a.b.c`` (``a.b.c.x`` too when that is
    a module) and the ``__init__`` of the packages above it, except those above the importing
    module, which Python has always started importing before it."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for statement in runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(statement, ast.Import):
                targets.update(alias.name for alias in statement.names)
                continue
            if statement.level:
                base = package.split(".")
                base = base[: len(base) - (statement.level - 1)]
                source = ".".join([*base, *([statement.module] if statement.module else [])])
            else:
                source = statement.module or ""
            targets.add(source)
            for alias in statement.names:
                if f"{source}.{alias.name}" in modules:
                    targets.add(f"{source}.{alias.name}")
        own_ancestors = {*_ancestors(name), name}
        for target in targets:
            if not (target == "pa_mixins" or target.startswith("pa_mixins.")):
                continue
            assert target in modules, f"{name} imports {target}, which is not a module"
            edges[name].add(target)
            edges[name].update(a for a in _ancestors(target) if a not in own_ancestors)
        edges[name].discard(name)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan), as
    ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)

    cycles = []
    for group in groups:
        members = set(group)
        start = group[0]
        # the shortest way back to start inside the group (breadth first)
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for node in frontier:
                for target in sorted(edges[node] & members):
                    if target not in previous:
                        previous[target] = node
                        following.append(target)
            frontier = following
        path = [start]
        node = previous[start]
        while node != start:
            path.append(node)
            node = previous[node]
        path.append(start)
        cycles.append(path[::-1])
    return cycles


def test_the_graph_is_read_as_python_imports() -> None:
    modules = package_modules()
    edges = import_edges(modules)
    # importing a submodule of another package runs that package's __init__ first
    assert {"pa_mixins.mixins", "pa_mixins.mixins.checkpointing"} <= edges["pa_mixins"]
    # ...but a module's own packages are not edges (they are always started before it)
    assert "pa_mixins.callbacks" not in edges["pa_mixins.callbacks.defaults"]
    assert "pa_mixins" not in edges["pa_mixins.base"]
    # a TYPE_CHECKING import is no edge
    assert "pa_mixins.base" not in edges["pa_mixins.callback_base"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_runtime_import_graph_has_no_circle() -> None:
    cycles = find_cycles(import_edges(package_modules()))
    assert not cycles, "modules of pa_mixins import each other in a circle: " + "; ".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_every_module_can_be_imported_first() -> None:
    # In a fresh interpreter, each module is imported before any other of the package (the
    # package's modules are forgotten between two): a circle that the order of imports in
    # pa_mixins/__init__.py happens to hide fails here.
    names = sorted(package_modules())
    script = textwrap.dedent(
        f"""
        import importlib, sys, traceback
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m == "pa_mixins" or m.startswith("pa_mixins.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=3))
        print("FAILED", failed)
        """
    )
    done = _run_python(script)
    assert "FAILED []" in done.stdout, done.stdout[-5000:]


def _closure(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = [start]
    while pending:
        for target in edges[pending.pop()]:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def test_the_root_runs_no_concrete_callback_module() -> None:
    edges = import_edges(package_modules())
    concrete = {
        name
        for name in package_modules()
        if name.startswith("pa_mixins.callbacks.") and name != "pa_mixins.callbacks.core"
    }
    assert not (_closure(edges, "pa_mixins.base") & concrete)
