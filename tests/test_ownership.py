"""One writer per attribute (issue 9): every attribute of a trainer is assigned by one class.

An AST scan of the package finds, for each trainer class defined in ``pa_mixins``
(``BaseTrainer`` and its subclasses), the attributes its methods assign on ``self``, and for
each module of ``pa_mixins/callbacks`` the attributes it assigns on ``trainer``. The expected
table below is written out by hand: a new attribute, a second writer or an attribute that is
no longer written makes a test fail, and the table (or the code) must be changed on purpose.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
from collections import defaultdict
from collections.abc import Iterator

import pa_mixins
import pa_mixins.trainer  # defines the ready-made trainers
from pa_mixins.base import BaseTrainer

PACKAGE = pathlib.Path(pa_mixins.__file__).resolve().parent
CALLBACKS = PACKAGE / "callbacks"

#: attribute -> the one trainer class whose methods assign it on ``self``
EXPECTED_OWNERS: dict[str, str] = {
    # BaseTrainer: what the user gives the constructor and the objects of the current run
    "model": "BaseTrainer",
    "loss_func": "BaseTrainer",
    "optimizer": "BaseTrainer",
    "callbacks": "BaseTrainer",
    "callback_handler": "BaseTrainer",
    "run_history": "BaseTrainer",
    "_env_batch_limit": "BaseTrainer",
    "train_dataset": "BaseTrainer",
    "eval_dataset": "BaseTrainer",
    "collate_fn": "BaseTrainer",
    "run_config": "BaseTrainer",
    "_train_dataloader": "BaseTrainer",
    "_eval_dataloader": "BaseTrainer",
    "_last_grad_norm": "BaseTrainer",  # what clipping by norm returned (last_grad_norm)
    "_eval_sets": "BaseTrainer",  # several evaluation sets by name (eval_set_names)
    "_eval_set_name": "BaseTrainer",  # the set being evaluated (eval_set_name)
    # TrainingLoopMixin: the run's position, its random state and the running loss
    "_loss_tracker": "TrainingLoopMixin",
    "_user_max_steps": "TrainingLoopMixin",
    "_shuffle_seed": "TrainingLoopMixin",
    "_position": "TrainingLoopMixin",  # a RunPosition: epoch, updates, micro-batch, resume
    "_train_dl_kwargs": "TrainingLoopMixin",
    "batches_in_epoch": "TrainingLoopMixin",
    # EvaluationMixin
    "_eval_loss_tracker": "EvaluationMixin",
    "_eval_dl_kwargs": "EvaluationMixin",
    # GradientAccumulationMixin: the open accumulation group
    "_group_size": "GradientAccumulationMixin",
    "_group_divisor": "GradientAccumulationMixin",
    "_items_in_group": "GradientAccumulationMixin",
    # SchedulerMixin
    "scheduler": "SchedulerMixin",
    "create_scheduler_fn": "SchedulerMixin",
    # MixedPrecisionMixin
    "requested_mixed_precision": "MixedPrecisionMixin",
    # DeepSpeedMixin, FSDPMixin: the engine's config as given
    "deepspeed_config": "DeepSpeedMixin",
    "fsdp_config": "FSDPMixin",
    # CompileMixin: the torch.compile keyword arguments as given (the adapter applies them)
    "compile_options": "CompileMixin",
    # CheckpointMixin: saves waiting for a safe point and the stop on signals
    "_pending_saves": "CheckpointMixin",
    "_in_run": "CheckpointMixin",
    "_several_processes": "CheckpointMixin",
    "_stop_signals": "CheckpointMixin",
    "stop_signal": "CheckpointMixin",
    "resumed_from": "CheckpointMixin",
    # ExperimentTrackingMixin: its options (the callbacks it adds live in the handler)
    "log_with": "ExperimentTrackingMixin",
    "project_dir": "ExperimentTrackingMixin",
    "log_every_n_steps": "ExperimentTrackingMixin",
    # AccelerateMixin: the Accelerator of the run and what the adapter decided for it
    "_accelerator": "AccelerateMixin",
    "accelerator_kwargs": "AccelerateMixin",
    "_engine_owns_optimizer": "AccelerateMixin",
    "_defer_stops": "AccelerateMixin",
    "_deferred_stop": "AccelerateMixin",
    "_pending_stop_agreement": "AccelerateMixin",
    "_stop_flag_carrier": "AccelerateMixin",
    "process_group_timeout": "AccelerateMixin",
    "_engine_settings": "AccelerateMixin",
    "_run_trains": "AccelerateMixin",
    "_reusing_engine": "AccelerateMixin",
    "_compile_kwargs": "AccelerateMixin",  # the run's torch.compile options, from CompileMixin
}

PROCESS_PROPERTIES = (
    "num_processes",
    "process_index",
    "is_world_process_zero",
    "is_local_process_zero",
    "is_distributed",
    "mixed_precision",
)


# ----------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------


def trainer_classes() -> list[type]:
    """``BaseTrainer`` and every subclass of it defined in ``pa_mixins`` (not in tests)."""
    found: list[type] = []
    stack = [BaseTrainer]
    while stack:
        cls = stack.pop()
        if cls in found:
            continue
        if cls.__module__ == "pa_mixins" or cls.__module__.startswith("pa_mixins."):
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


def _parse(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _class_node(cls: type) -> ast.ClassDef:
    path = pathlib.Path(inspect.getsourcefile(cls) or "")
    first_line = inspect.getsourcelines(cls)[1]
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            # the class statement's line, or that of its first decorator
            lines = [node.lineno, *(d.lineno for d in node.decorator_list)]
            if first_line in lines:
                return node
    raise AssertionError(f"class {cls.__qualname__} not found in {path}")


def _targets(node: ast.AST) -> Iterator[ast.expr]:
    """The expressions an assignment statement writes to, tuples and lists unpacked."""
    if isinstance(node, ast.Assign):
        pending = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        pending = [node.target]
    elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        pending = [node.target]
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        pending = [item.optional_vars for item in node.items if item.optional_vars is not None]
    elif isinstance(node, ast.NamedExpr):
        pending = [node.target]
    else:
        return
    while pending:
        target = pending.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            pending.extend(target.elts)
        elif isinstance(target, ast.Starred):
            pending.append(target.value)
        else:
            yield target


def attributes_written_on(tree: ast.AST, name: str) -> set[str]:
    """The attributes assigned on the variable ``name`` inside ``tree``: ``name.x = ...``
    (also annotated, augmented, in tuples), ``setattr(name, "x", ...)`` and
    ``del name.x``."""
    written: set[str] = set()
    for node in ast.walk(tree):
        for target in _targets(node):
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == name
            ):
                written.add(target.attr)
        if isinstance(node, ast.Delete):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == name
                ):
                    written.add(target.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == name
        ):
            key = node.args[1]
            assert isinstance(key, ast.Constant) and isinstance(key.value, str), (
                f"{node.func.id}({name}, <not a literal>) at line {node.lineno}: the scan "
                "cannot tell which attribute it writes"
            )
            written.add(key.value)
    return written


def _self_name(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The name of a method's instance argument (``None`` for a static or class method)."""
    decorators = {
        d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)
        for d in function.decorator_list
    }
    if decorators & {"staticmethod", "classmethod"}:
        return None
    positional = [*function.args.posonlyargs, *function.args.args]
    return positional[0].arg if positional else None


def attributes_written_by_class(cls: type) -> set[str]:
    """The attributes the methods of ``cls`` (its own, not inherited) assign on ``self``."""
    written: set[str] = set()
    for statement in _class_node(cls).body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self_name = _self_name(statement)
            if self_name is not None:
                written |= attributes_written_on(statement, self_name)
    return written


def scan_owners() -> dict[str, list[str]]:
    """attribute -> the trainer classes that assign it (sorted)."""
    owners: dict[str, set[str]] = defaultdict(set)
    for cls in trainer_classes():
        for attribute in attributes_written_by_class(cls):
            owners[attribute].add(cls.__name__)
    return {attribute: sorted(classes) for attribute, classes in sorted(owners.items())}


def callback_modules() -> list[pathlib.Path]:
    return sorted(CALLBACKS.glob("*.py"))


def package_modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


# ----------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------


def test_the_scan_sees_every_trainer_class_of_the_package() -> None:
    names = {cls.__name__ for cls in trainer_classes()}
    assert {
        "BaseTrainer",
        "AccelerateMixin",
        "CheckpointMixin",
        "EvaluationMixin",
        "ExperimentTrackingMixin",
        "GradientAccumulationMixin",
        "MixedPrecisionMixin",
        "SchedulerMixin",
        "TimmSchedulerMixin",
        "TrainingLoopMixin",
        "Trainer",
        "MinimalTrainer",
        "TrainerWithTimmScheduler",
    } <= names
    # class names are how the table says who owns what: they must be unique
    assert len(names) == len(trainer_classes())


def test_the_scan_finds_every_kind_of_assignment() -> None:
    tree = ast.parse(
        "def f(self):\n"
        "    self.a = 1\n"
        "    self.b: int = 2\n"
        "    self.c += 3\n"
        "    self.d, (self.e, *self.f) = 4, (5, 6)\n"
        "    setattr(self, 'g', 7)\n"
        "    other.h = 8\n"
        "    self.i.j = 9\n"
    )
    assert attributes_written_on(tree, "self") == {"a", "b", "c", "d", "e", "f", "g"}


def test_every_trainer_attribute_has_one_writing_class() -> None:
    shared = {
        attribute: classes for attribute, classes in scan_owners().items() if len(classes) > 1
    }
    assert not shared, (
        "attributes assigned by more than one trainer class (give each one owner, and let "
        f"the others go through a public method or seam of that owner): {shared}"
    )


def test_the_table_of_owners_is_up_to_date() -> None:
    scanned = {attribute: classes[0] for attribute, classes in scan_owners().items()}
    new = {a: o for a, o in scanned.items() if a not in EXPECTED_OWNERS}
    gone = sorted(set(EXPECTED_OWNERS) - set(scanned))
    moved = {
        a: f"{EXPECTED_OWNERS[a]} -> {o}"
        for a, o in scanned.items()
        if a in EXPECTED_OWNERS and EXPECTED_OWNERS[a] != o
    }
    assert not (new or gone or moved), (
        "EXPECTED_OWNERS is stale: update it on purpose (and docs/mixins.md, 'Owns').\n"
        f"new attributes: {new}\nno longer written: {gone}\nother owner: {moved}"
    )


def test_no_callback_writes_a_trainer_attribute() -> None:
    writes = {
        path.name: sorted(written)
        for path in callback_modules()
        if (written := attributes_written_on(_parse(path), "trainer"))
    }
    assert not writes, (
        "callbacks observe and decide through the trainer's public methods; they do not "
        f"assign its attributes: {writes}"
    )


def test_no_other_module_of_the_package_writes_a_trainer_attribute() -> None:
    # placeholders, utils, finetuning, tracking, ...: a trainer is changed by its own classes
    writes = {
        str(path.relative_to(PACKAGE)): sorted(written)
        for path in package_modules()
        if (written := attributes_written_on(_parse(path), "trainer"))
    }
    assert not writes, writes


def test_callbacks_use_no_private_name_of_the_trainer() -> None:
    private: dict[str, list[str]] = {}
    for path in callback_modules():
        for node in ast.walk(_parse(path)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "trainer"
                and node.attr.startswith("_")
            ):
                private.setdefault(path.name, []).append(f"line {node.lineno}: trainer.{node.attr}")
    assert not private, f"callbacks reach into the trainer's private names: {private}"


def _probes(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in ("self", "trainer")
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in PROCESS_PROPERTIES
        ):
            yield node.lineno, f"{node.func.id}({node.args[0].id}, {node.args[1].value!r})"


def test_no_module_probes_the_process_properties_that_the_root_declares() -> None:
    found = {
        str(path.relative_to(PACKAGE)): [f"line {line}: {call}" for line, call in probes]
        for path in package_modules()
        if (probes := list(_probes(_parse(path))))
    }
    assert not found, (
        "BaseTrainer declares the process roles and counts: read them as attributes, "
        f"without getattr probes: {found}"
    )
    # the text search too, so a probe the AST check misses (a different spelling) is caught
    texts = {
        str(path.relative_to(PACKAGE)): path.read_text().replace(" ", "")
        for path in package_modules()
    }
    for receiver in ("self", "trainer"):
        for name in PROCESS_PROPERTIES:
            for quote in ("'", '"'):
                probe = f"getattr({receiver},{quote}{name}{quote}"
                hits = [module for module, text in texts.items() if probe in text]
                assert not hits, f"{probe} in {hits}"


def test_the_root_declares_the_process_properties() -> None:
    for name in (*PROCESS_PROPERTIES, "num_updates"):
        assert isinstance(BaseTrainer.__dict__.get(name), property), name
