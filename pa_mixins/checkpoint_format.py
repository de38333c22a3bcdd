"""The on-disk format of checkpoints and training states, and how they are written and read.

A **training state** is a folder::

    pa_state.json        the manifest: format, version, generation, when it was saved, the
                         number of processes, the position in the run and every file's size
    trainer.<gen>.pt     what every process shares (weights, optimizer, scheduler, history,
                         callbacks), written by the first process
    rank<r>.<gen>.pt     what differs between processes (random generators, open
                         accumulation group, running loss), one per process

Files are written aside (temporary name), flushed to disk and renamed into place; the
manifest is written last, the same way, so a folder is a complete state exactly when its
manifest is there and matches (:func:`read_manifest`). Saving again writes the next
generation beside the current one and removes the older files once the new manifest is in
place.

Everything is read with ``torch.load(weights_only=True)`` (:func:`safe_load`) and JSON, and
written only after :func:`check_plain` has found nothing but tensors and plain values.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MANIFEST_NAME",
    "STATE_FORMAT",
    "STATE_VERSION",
    "CheckpointError",
    "UnsafeCheckpointError",
    "atomic_write",
    "check_model_fits",
    "check_optimizer_fits",
    "check_plain",
    "engine_dir_name",
    "generation_files",
    "list_training_states",
    "next_generation",
    "rank_file_name",
    "read_manifest",
    "read_training_state",
    "remove_files",
    "remove_stale_files",
    "resolve_training_state",
    "safe_load",
    "save_tensors",
    "state_position",
    "trainer_file_name",
    "write_manifest",
    "write_training_state",
]

STATE_FORMAT = "pa_mixins.training_state"
#: version 2 (pa_mixins 0.2): each mixin's state under its own key (training_state_dict)
STATE_VERSION = 2
MANIFEST_NAME = "pa_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint or training state cannot be written or read; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """A file holds objects that only a code-executing unpickler could load; it was refused."""


# ----------------------------------------------------------------------------------------------
# Plain data: what a state may hold
# ----------------------------------------------------------------------------------------------

_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def check_plain(obj: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``obj`` is made of tensors and plain values only, so that
    ``torch.load(weights_only=True)`` can read it back."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"{where} has a key of type {type(key).__name__}")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            check_plain(value, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}: a saved state may only hold "
        "tensors, numbers, strings, None and lists/tuples/dicts of them (so that it loads "
        "without running code); convert it to plain values first"
    )


# ----------------------------------------------------------------------------------------------
# Files: atomic writes, safe reads, manifests
# ----------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> int:
    """Write ``path`` aside, flush it to disk, then rename it into place. Returns its size."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path.stat().st_size


def save_tensors(obj: Any, path: Path) -> int:
    return atomic_write(path, lambda file: torch.save(obj, file))


def safe_load(path: str | os.PathLike[str], what: str = "file") -> Any:
    """``torch.load`` that runs no code from the file: tensors and plain values only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"Refusing to load the {what} {path}: it holds objects that only a code-executing "
            f"unpickler could create, and nothing in it was run ({error}). Load only files "
            "you trust; pa_mixins files hold tensors and plain values only."
        ) from None
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"The {what} {path} cannot be read (truncated, corrupt or not a torch file): {error}"
        ) from error


def read_manifest(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete training state; :class:`CheckpointError` saying what is
    wrong if ``state_dir`` is not one (no manifest: never finished or not a state; a listed
    file missing or of the wrong size: half-written or damaged)."""
    folder = Path(state_dir)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{folder} is not a complete training state: it has no {MANIFEST_NAME} (a state "
            "whose writing was interrupted, or a folder not written by save_training_state)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"The manifest {manifest_path} cannot be read: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{manifest_path} is not a pa_mixins training-state manifest")
    version = manifest.get("version", 0)
    if version != STATE_VERSION:
        age = "a newer" if version > STATE_VERSION else "an older"
        raise CheckpointError(
            f"{folder} was written by {age} pa_mixins (training-state version {version}; this "
            f"one reads version {STATE_VERSION}): resume it with the pa_mixins release that "
            "wrote it"
        )
    for name, size in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{folder} is incomplete: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(
                f"{folder} is damaged: {name} has {file.stat().st_size} bytes, the manifest "
                f"says {size} (half-written?)"
            )
    return manifest


def list_training_states(folder: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """The complete training states directly inside ``folder``, oldest first (by the time
    they were saved)."""
    root = Path(folder)
    states = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and not child.name.startswith("."):
                try:
                    states.append((child, read_manifest(child)))
                except CheckpointError:
                    continue
    states.sort(key=lambda item: (item[1].get("saved_at_ns", 0), item[0].name))
    return states


def resolve_training_state(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a training state, else the newest complete state inside it;
    a clear error when there is none."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"No training state at {folder}: the path does not exist")
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a training-state folder (load_checkpoint reads files "
            "written by save_checkpoint)"
        )
    if (folder / MANIFEST_NAME).exists() or any(folder.glob("trainer.*.pt")):
        read_manifest(folder)  # raises, saying what is wrong, unless it is complete
        return folder
    states = list_training_states(folder)
    if states:
        return states[-1][0]
    children = [child.name for child in folder.iterdir() if not child.name.startswith(".")]
    if not children:
        raise CheckpointError(f"{folder} is empty: there is no training state to resume from")
    problems = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            try:
                read_manifest(child)
            except CheckpointError as error:
                problems.append(str(error))
    detail = "; ".join(problems[:3]) if problems else f"it holds {sorted(children)[:5]}"
    raise CheckpointError(f"{folder} holds no complete training state: {detail}")


# ----------------------------------------------------------------------------------------------
# State folders: file names, generations, the manifest, the position
# ----------------------------------------------------------------------------------------------


def trainer_file_name(generation: int) -> str:
    """The file every process shares, of generation ``generation``."""
    return f"trainer.{generation}.pt"


def rank_file_name(rank: int, generation: int) -> str:
    """The file of process ``rank``, of generation ``generation``."""
    return f"rank{rank}.{generation}.pt"


def engine_dir_name(generation: int) -> str:
    """The folder of an engine's own checkpoint (DeepSpeed), of generation ``generation``."""
    return f"engine.{generation}"


def write_manifest(
    folder: Path, generation: int, num_processes: int, position: dict[str, Any]
) -> dict[str, int]:
    """Commit generation ``generation`` of the state in ``folder``: write its manifest
    atomically, listing the shared file, the ``num_processes`` per-process files and the files
    of an engine's checkpoint folder, with their sizes. Returns the listed files (name: size)."""
    files = {
        trainer_file_name(generation): 0,
        **{rank_file_name(r, generation): 0 for r in range(num_processes)},
    }
    engine_dir = folder / engine_dir_name(generation)
    if engine_dir.is_dir():
        for path in sorted(engine_dir.rglob("*")):
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = 0
    for name in files:
        files[name] = (folder / name).stat().st_size
    manifest = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "generation": generation,
        "saved_at_ns": time.time_ns(),
        "num_processes": num_processes,
        "position": position,
        "files": files,
    }
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(folder / MANIFEST_NAME, lambda file: file.write(text))
    return files


def state_position(
    phase: str, epoch: int, next_step: int, num_updates: int, max_steps_reached: bool
) -> dict[str, Any]:
    """Where a state sits in the run: ``phase`` is ``"train"`` (before micro-batch
    ``next_step`` of epoch ``epoch``, 0-based), ``"train_done"`` / ``"eval_done"`` (after the
    epoch's training / evaluation), ``"epoch_start"`` (before epoch ``epoch``) or ``"ended"``
    (after a run that stopped early)."""
    return {
        "phase": phase,
        "epoch": int(epoch),
        "next_step": int(next_step),
        "num_updates": int(num_updates),
        "max_steps_reached": bool(max_steps_reached),
    }


def generation_files(folder: Path, generation: int) -> list[str]:
    """The names of the data files of generation ``generation`` in ``folder``."""
    suffix = f".{generation}.pt"
    return [p.name for p in folder.iterdir() if p.name.endswith(suffix)]


def next_generation(folder: Path) -> int:
    """One more than the newest generation with a data file in ``folder`` (1 if none)."""
    newest = 0
    for path in folder.iterdir():
        parts = path.name.split(".")
        if len(parts) == 3 and parts[2] == "pt" and parts[1].isdigit():
            newest = max(newest, int(parts[1]))
        elif len(parts) == 2 and parts[0] == "engine" and parts[1].isdigit():
            newest = max(newest, int(parts[1]))
    return newest + 1


def remove_stale_files(folder: Path, keep: set[str]) -> None:
    """Remove older generations' files and engine folders, and leftovers of interrupted
    writes."""
    kept_dirs = {name.split("/", 1)[0] for name in keep if "/" in name}
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith("engine.") and path.name not in kept_dirs:
            shutil.rmtree(path, ignore_errors=True)
            continue
        stale_data = path.suffix == ".pt" and path.name not in keep
        leftover = path.name.startswith(".") and ".tmp-" in path.name
        if path.is_file() and (stale_data or leftover):
            with contextlib.suppress(OSError):
                path.unlink()


def remove_files(paths: list[Path]) -> None:
    """Remove ``paths``, ignoring those that cannot be removed."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


# ----------------------------------------------------------------------------------------------
# Does a saved state fit?
# ----------------------------------------------------------------------------------------------


def check_model_fits(model: torch.nn.Module, weights: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``weights`` has exactly the model's keys and
    shapes; ``source`` names the file in the message."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [
        f"{key}: saved {tuple(weights[key].shape)}, model {tuple(own[key].shape)}"
        for key in own
        if key in weights
        and isinstance(weights[key], torch.Tensor)
        and tuple(weights[key].shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append("shape mismatch: " + "; ".join(wrong[:5]))
        if missing:
            details.append(f"missing from the file: {missing[:5]}")
        if unexpected:
            details.append(f"not in the model: {unexpected[:5]}")
        raise CheckpointError(
            f"{source} does not fit this model ({'; '.join(details)}); nothing was loaded"
        )


def check_optimizer_fits(optimizer: Any, state: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has the optimizer's parameter groups."""
    saved = [len(group["params"]) for group in state.get("param_groups", [])]
    own = [len(group["params"]) for group in optimizer.param_groups]
    if saved != own:
        raise CheckpointError(
            f"The optimizer state in {source} has parameter groups of sizes {saved}; this "
            f"optimizer has {own}; nothing was loaded"
        )


# ----------------------------------------------------------------------------------------------
# Writing and reading a whole training state (every process takes part)
# ----------------------------------------------------------------------------------------------


def write_training_state(
    output_dir: Path,
    shared_state: dict[str, Any] | None,
    process_state: dict[str, Any],
    *,
    rank: int,
    num_processes: int,
    position: dict[str, Any],
    value_from_main: Callable[[int], int],
    any_process: Callable[[bool], bool],
    write_engine_state: Callable[[Path], None] | None = None,
) -> None:
    """Write a training state to ``output_dir``, crash-safely, on every process at once.

    ``shared_state`` (given on the first process only, ``None`` elsewhere) goes to the shared
    file, ``process_state`` to this process's file, and ``write_engine_state`` (on every
    process) writes an engine's checkpoint into the generation's engine folder.
    ``value_from_main`` and ``any_process`` are the trainer's agreements between processes.
    The first process picks the generation, every process writes its file aside, and the
    manifest commits the state; if anything fails on any process, the new files are removed
    and the previous state (if any) stays.
    """
    is_main = shared_state is not None
    # 1. The first process prepares the folder and picks the new generation number.
    generation, problem = -1, ""
    if is_main:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            generation = next_generation(output_dir)
        except OSError as error:
            problem = f"{type(error).__name__}: {error}"
    generation = value_from_main(generation)
    if generation < 0:
        raise CheckpointError(
            f"Cannot write a training state to {output_dir}: "
            f"{problem or 'the first process could not create the folder'}"
        )

    # 2. Every process writes its files aside; nothing is visible without the manifest.
    written: list[Path] = []
    failure: BaseException | None = None
    try:
        if shared_state is not None:
            path = output_dir / trainer_file_name(generation)
            written.append(path)
            save_tensors(shared_state, path)
        path = output_dir / rank_file_name(rank, generation)
        written.append(path)
        save_tensors(process_state, path)
        if write_engine_state is not None:
            write_engine_state(output_dir / engine_dir_name(generation))
    except (OSError, TypeError, RuntimeError) as error:
        failure = error
    engine_dir = output_dir / engine_dir_name(generation)
    if any_process(failure is not None):
        remove_files(written)
        shutil.rmtree(engine_dir, ignore_errors=True)
        raise CheckpointError(
            f"Writing the training state to {output_dir} failed"
            + (f": {type(failure).__name__}: {failure}" if failure else " on another process")
            + "; the previous state in that folder (if any) is unchanged"
        ) from failure

    # 3. The first process commits the manifest, then removes the older generation.
    ok = 1
    if is_main:
        try:
            files = write_manifest(output_dir, generation, num_processes, position)
            remove_stale_files(output_dir, keep=set(files))
        except OSError as error:
            ok, failure = 0, error
    if value_from_main(ok) != 1:
        own_files = [output_dir / name for name in generation_files(output_dir, generation)]
        remove_files(own_files if is_main else written)
        shutil.rmtree(engine_dir, ignore_errors=True)
        raise CheckpointError(
            f"Committing the training state in {output_dir} failed"
            + (f": {failure}" if failure else "")
            + "; the previous state in that folder (if any) is unchanged"
        ) from failure


def read_training_state(
    state_dir: Path, num_processes: int, rank: int, strict: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The shared state and this process's state of the complete training state in
    ``state_dir``. A state saved by another number of processes raises (``strict``) or gives
    no process state, with a warning."""
    manifest = read_manifest(state_dir)
    generation = manifest["generation"]
    shared = safe_load(state_dir / trainer_file_name(generation), "training state")
    if not isinstance(shared, dict) or shared.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_dir} does not hold a pa_mixins training state")
    saved_processes = int(manifest["num_processes"])
    if saved_processes != num_processes:
        message = (
            f"The training state {state_dir} was saved by {saved_processes} process(es); this "
            f"run has {num_processes}. The data position and the per-process random states "
            "depend on the number of processes: resume with the same number"
        )
        if strict:
            raise CheckpointError(message)
        warnings.warn(message + "; the random states are not restored", stacklevel=3)
        return shared, None
    process = safe_load(state_dir / rank_file_name(rank, generation), "training state")
    return shared, process
