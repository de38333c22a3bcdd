"""``compile=``: the everyday trainer through ``torch.compile`` (CompileMixin and the adapter).

Real tiny models trained through the real Accelerate on the CPU. Most runs compile with the
``eager`` backend (Dynamo captures the graph, which then runs op by op, so the numbers are the
uncompiled run's) or ``aot_eager`` (AOTAutograd's forward and backward graphs too); the
inductor backend (``compile=True``) needs ~12 s warm and ~35 s with a cold cache for this
model here, so it is run by ``benchmarks/bench_loop.py --variants trainer_compile`` instead.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import CompileMixin, DeepSpeedTrainer, MinimalTrainer, Trainer, TrainerCallback
from pa_mixins.checkpoint_format import read_training_state
from tests.conftest import REPO_ROOT, launch_env, launcher, make_model, make_regression_data

EAGER = {"backend": "eager"}
SCRIPT = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "compile_run.py"


def _names(model: nn.Module) -> str:
    inner = getattr(model, "_orig_mod", None)
    return type(model).__name__ + ("" if inner is None else f"({type(inner).__name__})")


class RecordModels(TrainerCallback):
    """The class names of the models that the training and evaluation steps run."""

    def __init__(self) -> None:
        self.train: set[str] = set()
        self.eval: set[str] = set()

    def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
        self.train.add(_names(trainer.model))

    def on_eval_step_start(self, trainer: Any, **kwargs: Any) -> None:
        self.eval.add(_names(trainer.model))


class AtEpochEnd(TrainerCallback):
    """Calls ``action(trainer)`` at the end of the first training epoch."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def on_train_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.run_history.current_epoch == 1:
            self.action(trainer)


def _trainer(
    compile: Any = None, seed: int = 0, callbacks: tuple[Any, ...] = (), **options: Any
) -> Trainer:
    model = make_model(seed=seed)
    return Trainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=callbacks,
        compile=compile,
        **options,
    )


def _train(trainer: Trainer, epochs: int = 2, **kwargs: Any) -> None:
    trainer.train(
        train_dataset=make_regression_data(48),
        eval_dataset=make_regression_data(20, seed=1),
        num_epochs=epochs,
        per_device_batch_size=8,
        seed=5,
        **kwargs,
    )


def _history(trainer: Trainer) -> dict[str, list[float]]:
    history = trainer.run_history
    return {name: history.get_metric_values(name) for name in history.get_metric_names()}


def _assert_same_weights(a: nn.Module, b: nn.Module, atol: float) -> None:
    for (name, x), (other, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name == other
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def _assert_same_history(a: Trainer, b: Trainer, rel: float) -> None:
    ha, hb = _history(a), _history(b)
    assert ha.keys() == hb.keys()
    for name, values in ha.items():
        assert values == pytest.approx(hb[name], rel=rel), name


# ----------------------------------------------------------------------------------------------
# The run: same numbers, compiled steps, the user's module afterwards
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "tolerance"), [("eager", 0.0), ("aot_eager", 1e-5)])
def test_a_compiled_run_gives_the_uncompiled_run(backend: str, tolerance: float) -> None:
    recorder = RecordModels()
    compiled = _trainer({"backend": backend}, callbacks=(recorder,))
    plain = _trainer()
    user_module = compiled.model
    for trainer in (compiled, plain):
        _train(trainer, gradient_accumulation_steps=2, gradient_clip_norm=1.0)

    assert recorder.train == {"OptimizedModule(Sequential)"}
    assert recorder.eval == {"OptimizedModule(Sequential)"}
    _assert_same_history(compiled, plain, rel=tolerance)
    _assert_same_weights(compiled.model, plain.model, atol=tolerance)
    assert compiled.num_updates == plain.num_updates == 6
    # The compile wrapper belongs to the run: the user's module comes back.
    assert compiled.model is user_module
    assert compiled.get_model() is user_module
    assert not hasattr(user_module, "_orig_mod")


def test_bf16_mixed_precision_is_compiled_with_its_autocast() -> None:
    recorder = RecordModels()
    compiled = _trainer(EAGER, callbacks=(recorder,), mixed_precision="bf16")
    plain = _trainer(mixed_precision="bf16")
    for trainer in (compiled, plain):
        _train(trainer, epochs=1)
    assert recorder.train == {"OptimizedModule(Sequential)"}
    _assert_same_history(compiled, plain, rel=0.0)
    _assert_same_weights(compiled.model, plain.model, atol=0.0)
    # bf16 really ran: the bf16 loss differs from the fp32 one.
    fp32 = _trainer()
    _train(fp32, epochs=1)
    assert _history(compiled)["train_loss_epoch"] != _history(fp32)["train_loss_epoch"]


def test_evaluate_and_predict_run_compiled_and_give_the_uncompiled_numbers() -> None:
    recorder = RecordModels()
    compiled = _trainer({"backend": "aot_eager"}, seed=3, callbacks=(recorder,))
    plain = _trainer(seed=3)
    data = make_regression_data(20, seed=2)
    for trainer in (compiled, plain):
        trainer.evaluate(data, per_device_batch_size=8)
    assert recorder.eval == {"OptimizedModule(Sequential)"}
    assert _history(compiled)["evaluation_loss"] == pytest.approx(
        _history(plain)["evaluation_loss"], rel=1e-6
    )
    predictions = compiled.predict(data, per_device_batch_size=8)
    torch.testing.assert_close(
        predictions, plain.predict(data, per_device_batch_size=8), atol=1e-6, rtol=0
    )
    assert predictions.shape == (20, 1)
    assert type(compiled.model) is nn.Sequential


def test_the_default_trainer_does_not_compile_even_after_a_compiled_one() -> None:
    compiled = _trainer(EAGER)
    assert compiled.compile_options == {"backend": "eager"}
    assert compiled.get_accelerator_kwargs()["torch_compile"] == {"backend": "eager"}
    _train(compiled, epochs=1)

    recorder = RecordModels()
    plain = _trainer(callbacks=(recorder,))
    assert plain.compile_options is None
    assert "torch_compile" not in plain.get_accelerator_kwargs()
    assert _trainer(compile=False).compile_options is None
    assert _trainer(compile=True).compile_options == {}  # torch.compile's defaults (inductor)
    _train(plain, epochs=1)
    assert recorder.train == recorder.eval == {"Sequential"}


# ----------------------------------------------------------------------------------------------
# Checkpoints and training states stay portable
# ----------------------------------------------------------------------------------------------


def test_checkpoints_and_states_of_a_compiled_run_have_plain_keys_and_load_anywhere(
    tmp_path: pathlib.Path,
) -> None:
    checkpoint, state = tmp_path / "compiled.pt", tmp_path / "state"

    def save(trainer: Any) -> None:
        assert hasattr(trainer.model, "_orig_mod")  # saved while the model runs compiled
        trainer.save_checkpoint(checkpoint)
        trainer.save_training_state(state)

    compiled = _trainer(EAGER, callbacks=(AtEpochEnd(save),))
    _train(compiled)
    plain_keys = list(make_model().state_dict())

    saved = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    assert list(saved) == plain_keys
    shared, _ = read_training_state(state, num_processes=1, rank=0, strict=True)
    assert list(shared["model"]) == plain_keys

    # into a plain nn.Module, strictly
    module = make_model(seed=9)
    module.load_state_dict(saved)
    # into an uncompiled trainer
    plain = _trainer(seed=9)
    plain.load_checkpoint(checkpoint)
    _assert_same_weights(plain.model, module, atol=0.0)

    # an uncompiled trainer resumes the compiled run's state and ends where it ended
    resumed = _trainer(seed=9)
    _train(resumed, resume_from=str(state))
    _assert_same_weights(resumed.model, compiled.model, atol=0.0)
    assert _history(resumed) == _history(compiled)


def test_a_compiled_trainer_loads_and_resumes_what_an_uncompiled_one_saved(
    tmp_path: pathlib.Path,
) -> None:
    checkpoint, state = tmp_path / "plain.pt", tmp_path / "state"

    def save(trainer: Any) -> None:
        trainer.save_checkpoint(checkpoint)
        trainer.save_training_state(state)

    plain = _trainer(seed=4, callbacks=(AtEpochEnd(save),))
    _train(plain)

    # resume inside a compiled run (the state is loaded into the compiled model's module)
    resumed = _trainer(EAGER, seed=9)
    _train(resumed, resume_from=str(state))
    _assert_same_weights(resumed.model, plain.model, atol=0.0)
    assert _history(resumed) == _history(plain)

    # load a checkpoint while the model runs compiled: the compiled steps use its weights
    class LoadAtStart(TrainerCallback):
        def on_training_run_start(self, trainer: Any, **kwargs: Any) -> None:
            assert hasattr(trainer.model, "_orig_mod")
            trainer.load_checkpoint(checkpoint, load_optimizer=False)

    loaded = _trainer(EAGER, seed=9, callbacks=(LoadAtStart(),))
    _train(loaded, epochs=1)
    reference = _trainer(seed=9)
    reference.load_checkpoint(checkpoint, load_optimizer=False)
    _train(reference, epochs=1)
    _assert_same_weights(loaded.model, reference.model, atol=0.0)
    assert _history(loaded) == _history(reference)


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error before anything runs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("yes", TypeError, r"compile must be True, False, None or a dict.*got 'yes'"),
        (1, TypeError, r"compile must be True, False, None or a dict.*got 1"),
        ({"bakend": "eager"}, ValueError, r"unknown key\(s\) 'bakend'.*backend"),
        ({"fullgraph": "yes"}, TypeError, r"compile\['fullgraph'\] must be True or False"),
        ({"dynamic": 1.5}, TypeError, r"compile\['dynamic'\]"),
        ({"backend": 3}, TypeError, r"compile\['backend'\] must be a backend name"),
        ({"backend": "no_such_backend"}, ValueError, r"torch.compile refuses.*no_such_backend"),
        ({"mode": "default", "options": {}}, ValueError, r"torch.compile refuses.*mode or opt"),
    ],
)
def test_a_bad_compile_option_is_refused_when_the_trainer_is_created(
    value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _trainer(value)


def test_a_model_that_is_already_compiled_is_refused() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(ValueError, match="already compiled"):
        Trainer(torch.compile(model), nn.MSELoss(), optimizer, compile=EAGER)
    model.compile(backend="eager")
    with pytest.raises(ValueError, match="already compiled"):
        Trainer(model, nn.MSELoss(), optimizer, compile=EAGER)


def test_compile_together_with_accelerates_own_compile_is_refused() -> None:
    recorder = RecordModels()
    trainer = _trainer(EAGER, callbacks=(recorder,), accelerator_kwargs={"dynamo_backend": "eager"})
    with pytest.raises(ValueError, match="Accelerate compiled the model already"):
        _train(trainer, epochs=1)
    assert recorder.train == set()


def test_the_mixin_adds_compile_to_an_assembly_of_its_own() -> None:
    class CompiledMinimal(CompileMixin, MinimalTrainer):
        """MinimalTrainer (which leaves compile out) with the option."""

    recorder = RecordModels()
    model = make_model()
    trainer = CompiledMinimal(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=(recorder,),
        compile=EAGER,
    )
    _train(trainer, epochs=1)
    assert recorder.train == recorder.eval == {"OptimizedModule(Sequential)"}
    assert trainer.model is model


def test_a_trainer_without_the_mixin_names_it() -> None:
    model = make_model()
    with pytest.raises(TypeError, match="'compile' is an option of CompileMixin"):
        MinimalTrainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters()), compile=True)


def test_compile_on_deepspeed_is_refused_before_training() -> None:
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    recorder = RecordModels()
    trainer = DeepSpeedTrainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=(recorder,),
        compile=EAGER,
    )
    with pytest.raises(ValueError, match="compile= cannot be used on a DEEPSPEED run"):
        trainer.train(make_regression_data(8), num_epochs=1)
    assert recorder.train == set()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    # refused before any of DeepSpeed was set up: a plain trainer of the process still trains
    plain = _trainer()
    start = [p.detach().clone() for p in plain.model.parameters()]
    _train(plain, epochs=1)
    assert plain.num_updates == 6
    assert all(not torch.equal(p, q) for p, q in zip(plain.model.parameters(), start))


# ----------------------------------------------------------------------------------------------
# Two processes: compile(DDP(model)), evaluation outside DDP, the user's module afterwards
# ----------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_processes_compile_the_ddp_model_and_match_one_uncompiled_process(
    tmp_path: pathlib.Path,
) -> None:
    checkpoint = tmp_path / "mid_run.pt"
    command = [*launcher(2), str(SCRIPT), str(tmp_path), "--backend", "eager"]
    args = ["--batch-size", "4", "--accumulation", "2", "--checkpoint", str(checkpoint)]
    done = subprocess.run(
        [*command, *args],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json")))

    assert rank0["num_processes"] == 2
    # compiled around DDP (PyTorch's order), also after a checkpoint was saved in the middle
    # of the run; evaluation runs the module outside DDP (no collective: the processes
    # evaluate 3 and 2 batches), compiled on its own
    assert rank0["seen"] == {
        "train": ["OptimizedModule(DistributedDataParallel)"],
        "eval": ["OptimizedModule(Sequential)"],
    }
    assert rank0["model_is_the_users"] and rank1["model_is_the_users"]
    assert rank0["weights"] == rank1["weights"]
    assert rank0["history"] == rank1["history"]
    saved = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    assert list(saved) == list(make_model().state_dict())  # no module. or _orig_mod. prefix

    # the same run on one uncompiled process with twice the batch
    model = make_model()
    single = Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05), callbacks=()
    )
    single.train(
        train_dataset=make_regression_data(64),
        eval_dataset=make_regression_data(9, seed=1),
        num_epochs=2,
        per_device_batch_size=8,
        gradient_accumulation_steps=2,
        seed=11,
    )
    for w2, w1 in zip(rank0["weights"], model.parameters()):
        assert w2 == pytest.approx(w1.detach().flatten().tolist(), abs=1e-5)
    for name, values in _history(single).items():
        assert rank0["history"][name] == pytest.approx(values, rel=1e-5)
