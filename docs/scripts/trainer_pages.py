"""Write docs/trainers/<name>.md, one page per ready-made trainer of ``pa_mixins.trainer``,
from the code: its method resolution order and which class supplies each public hook and
seam (and which ones a ``super()`` call reaches next).

Run from anywhere after changing an assembly: ``python docs/scripts/trainer_pages.py``.
``tests/test_docs_trainer_pages.py`` regenerates the pages into a temporary folder and fails
when the committed ones differ.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "trainers"

TRAINERS = (
    "Trainer",
    "MinimalTrainer",
    "TrainerWithTimmScheduler",
    "DeepSpeedTrainer",
    "FSDPTrainer",
)

# the public hooks (pytorch-accelerated's names), in the order a run calls them
HOOKS = (
    "get_default_train_dl_kwargs",
    "create_train_dataloader",
    "get_default_eval_dl_kwargs",
    "create_eval_dataloader",
    "create_scheduler",
    "training_run_start",
    "train_epoch_start",
    "get_train_batch_limit",
    "calculate_train_batch_loss",
    "backward_step",
    "optimizer_step",
    "scheduler_step",
    "optimizer_zero_grad",
    "train_epoch_end",
    "eval_epoch_start",
    "get_eval_batch_limit",
    "calculate_eval_batch_loss",
    "eval_epoch_end",
    "training_run_epoch_end",
    "training_run_end",
    "evaluation_run_start",
    "evaluation_run_end",
    "calculate_batch_predictions",
)

# the seams a mixin extends (declared, with their defaults, on BaseTrainer)
SEAMS = (
    "get_accelerator_kwargs",
    "reset_run_state",
    "configure_run",
    "setup_scheduler",
    "resume_run",
    "training_run_context",
    "is_update_step",
    "loss_for_backward",
    "before_optimizer_step",
    "after_optimizer_step",
    "has_pending_update",
    "at_safe_point",
    "training_state_dict",
    "load_training_state_dict",
    "process_state_dict",
    "load_process_state_dict",
    "save_engine_state",
    "load_engine_state",
)

_ROLE = re.compile(r":\w+:`~?([\w.]+)`")


def _summary(cls: type) -> str:
    """The first paragraph of the class docstring, on one line, Sphinx roles as code."""
    doc = inspect.getdoc(cls) or ""
    first = doc.split("\n\n")[0]
    first = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", first)
    return " ".join(first.split())


def _signature(cls: type, name: str) -> str:
    try:
        parameters = list(inspect.signature(getattr(cls, name)).parameters)
    except (TypeError, ValueError):
        return f"{name}()"
    return f"{name}({', '.join(p for p in parameters if p != 'self')})"


def _mro(cls: type) -> list[type]:
    return [c for c in cls.__mro__ if c.__module__.startswith("pa_mixins")]


def _table(cls: type, names: tuple[str, ...], kind: str) -> list[str]:
    lines = [
        f"| {kind} | supplied by | then, through `super()` |",
        "|---|---|---|",
    ]
    for name in names:
        definers = [c.__name__ for c in _mro(cls) if name in vars(c)]
        if not definers:
            continue
        rest = " → ".join(definers[1:]) or "—"
        lines.append(f"| `{_signature(cls, name)}` | {definers[0]} | {rest} |")
    return lines


def render(name: str) -> str:
    """The Markdown page of the trainer ``name`` of ``pa_mixins.trainer``."""
    import pa_mixins.trainer

    cls = getattr(pa_mixins.trainer, name)
    mro = _mro(cls)
    lines = [
        "<!-- Generated from the code by docs/scripts/trainer_pages.py: do not edit by hand. -->",
        "",
        f"# {name}",
        "",
        _summary(cls),
        "",
        "```text",
        f"from pa_mixins.trainer import {name}",
        "```",
        "",
        "## Method resolution order",
        "",
        "Which class is asked first (see [the mixins](../mixins.md)):",
        "",
    ]
    lines += [f"{i}. `{c.__name__}` (`{c.__module__}`)" for i, c in enumerate(mro, start=1)]
    lines += [
        "",
        "## Which class supplies each hook",
        "",
        "Override a hook in a subclass; `super()` reaches the last column's classes, in order.",
        "",
        *_table(cls, HOOKS, "hook"),
        "",
        "## Which class supplies each seam",
        "",
        "The seams mixins extend; the default is `BaseTrainer`'s.",
        "",
        *_table(cls, SEAMS, "seam"),
        "",
    ]
    return "\n".join(lines)


def write_pages(folder: Path = OUTPUT) -> list[Path]:
    """Write one page per trainer into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TRAINERS:
        path = folder / f"{name}.md"
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for written in write_pages():
        print(written.relative_to(ROOT))
