""":class:`TensorBoardTracker`: TensorBoard event files, written with torch's ``SummaryWriter``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pa_mixins.trackers.base import (
    DEFAULT_PROJECT_DIR,
    Tracker,
    flatten_config,
    jsonable_config,
)

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker(Tracker):
    """Write each run's event files to ``project_dir/<run_name>/`` (next to the CSV tracker's
    files, if both are used), so that ``tensorboard --logdir project_dir`` lists the runs by
    name.

    Each metric is a scalar at its step. The configuration is written twice: flattened as the
    run's hyperparameters (the HPARAMS tab; the session ends as successful or failed when the
    run finishes) and as JSON text (the TEXT tab, tag ``config``). Starting a run whose folder
    already exists continues it: TensorBoard reads all event files of a folder as one run.

    Needs the ``tensorboard`` package: ``pip install 'pa_mixins[tensorboard]'``.
    """

    name = "tensorboard"
    extra = "tensorboard"
    required_modules = ("tensorboard",)

    def __init__(self, project_dir: str | os.PathLike[str] = DEFAULT_PROJECT_DIR) -> None:
        super().__init__(project_dir)
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter`` of the open run (``None`` if none)."""
        return self._writer

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        run_name = self._check_can_start(run_name)
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        writer: Any = SummaryWriter(log_dir=str(self.project_dir / run_name))
        flat = flatten_config(config)
        if flat:
            experiment, session_start, _ = hparams(flat, {})
            file_writer = writer.file_writer
            file_writer.add_summary(experiment)
            file_writer.add_summary(session_start)
        text = json.dumps(jsonable_config(config), indent=2, sort_keys=True)
        # Indented by four spaces: a Markdown code block in the TEXT tab.
        writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
        writer.flush()
        self._writer = writer
        self.run_name = run_name

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._check_running()
        for name, value in metrics.items():
            self._writer.add_scalar(name, float(value), global_step=int(step))
        self._writer.flush()

    def finish(self, failed: bool = False) -> None:
        writer, self._writer = self._writer, None
        self.run_name = None
        if writer is None:
            return
        try:
            writer.file_writer.add_summary(_session_end_summary(failed))
        finally:
            writer.close()


def _session_end_summary(failed: bool) -> Any:
    """The hparams plugin's "session ended" record, with a success or failure status (built
    as ``torch.utils.tensorboard.summary.hparams`` builds its success record)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import (
        PLUGIN_DATA_VERSION,
        PLUGIN_NAME,
        SESSION_END_INFO_TAG,
    )
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    status = Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS")
    content = HParamsPluginData(
        session_end_info=SessionEndInfo(status=status), version=PLUGIN_DATA_VERSION
    )
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content.SerializeToString()
        )
    )
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
