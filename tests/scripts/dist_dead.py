"""A process that dies or hangs mid-training: the others must fail, not wait forever.

``dist_dead.py OUT_DIR MODE TIMEOUT_S``: at update 3, process 1 kills itself (MODE=kill) or
stops answering (MODE=hang: it sleeps). The trainer uses ``process_group_timeout=TIMEOUT_S``.
Process 0 writes OUT_DIR/rank0_error.txt with the error it got.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
import traceback
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer
from pa_mixins.callbacks import TrainerCallback
from tests.conftest import make_model, make_regression_data


class Die(TrainerCallback):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
        if trainer.process_index != 1 or num_updates != 3:
            return
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher may end it afterwards
        time.sleep(300)


def main() -> None:
    out, mode, timeout = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=(Die(mode),),
        process_group_timeout=timeout,
    )
    started = time.monotonic()
    try:
        trainer.train(make_regression_data(64), num_epochs=200, per_device_batch_size=2)
    except BaseException:
        if trainer.process_index == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "rank0_error.txt").write_text(
                f"after {time.monotonic() - started:.1f}s\n{traceback.format_exc()}"
            )
        raise


if __name__ == "__main__":
    main()
