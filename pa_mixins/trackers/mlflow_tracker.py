""":class:`MLflowTracker`: MLflow runs in a local store under ``project_dir``."""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pa_mixins.trackers.base import DEFAULT_PROJECT_DIR, Tracker, flatten_config

__all__ = ["MLflowTracker"]

_MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value (since 2.x)
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_STORE_MODULES = ("sqlalchemy", "alembic")


def _mlflow_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . /`` and spaces."""
    return re.sub(r"[^\w\-. /]", "_", name)


class MLflowTracker(Tracker):
    """Record each run as an MLflow run (named ``run_name``) in the experiment
    ``experiment_name``.

    The store is, in this order: ``tracking_uri`` if given, else the ``MLFLOW_TRACKING_URI``
    environment variable, else a local SQLite database ``project_dir/mlflow.db`` (artifacts in
    ``project_dir/mlartifacts``). MLflow 3 refuses the older ``./mlruns`` file store unless
    ``MLFLOW_ALLOW_FILE_STORE=true``; pass ``tracking_uri="file:..."`` with that variable set
    if you want it. See the runs with
    ``mlflow ui --backend-store-uri sqlite:///project_dir/mlflow.db``.

    The configuration becomes the run's params (flattened: ``train_dl_kwargs.batch_size``;
    values longer than MLflow's limit are cut), metrics are logged at their step, and
    :meth:`finish` sets the status ``FINISHED`` or ``FAILED``. Starting a run name that already
    exists in the experiment continues that run (status back to ``RUNNING``); params it already
    has keep their first value (MLflow does not allow changing one; a changed value is
    reported with a warning).

    Needs ``mlflow`` or ``mlflow-skinny``, and SQLAlchemy and Alembic for the SQLite store:
    ``pip install 'pa_mixins[mlflow]'``.
    """

    name = "mlflow"
    extra = "mlflow"
    required_modules = ("mlflow",)

    def __init__(
        self,
        project_dir: str | os.PathLike[str] = DEFAULT_PROJECT_DIR,
        experiment_name: str = "pa_mixins",
        tracking_uri: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(project_dir)
        self.experiment_name = experiment_name
        self._explicit_uri = tracking_uri
        self.tags = dict(tags or {})
        if self._uses_local_store:
            self.require(_STORE_MODULES)
        self._client: Any = None
        self.run_id: str | None = None

    @property
    def _uses_local_store(self) -> bool:
        return self._explicit_uri is None and not os.environ.get("MLFLOW_TRACKING_URI")

    @property
    def tracking_uri(self) -> str:
        """The store this tracker writes to."""
        if self._explicit_uri is not None:
            return self._explicit_uri
        from_env = os.environ.get("MLFLOW_TRACKING_URI")
        if from_env:
            return from_env
        return f"sqlite:///{(self.project_dir / 'mlflow.db').resolve().as_posix()}"

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        run_name = self._check_can_start(run_name)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = self._uses_local_store
        if local:
            self.project_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = (self.project_dir / "mlartifacts").resolve().as_uri() if local else None
            experiment_id = client.create_experiment(
                self.experiment_name, artifact_location=artifacts
            )
        existing = client.search_runs(
            [experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1
        )
        if existing:
            run = existing[0]
            client.update_run(run.info.run_id, status="RUNNING")
            logged = dict(run.data.params)
        else:
            run = client.create_run(experiment_id, run_name=run_name, tags=self.tags)
            logged = {}
        run_id = run.info.run_id

        params: list[Any] = []
        changed: list[str] = []
        for key, value in flatten_config(config).items():
            key, text = _mlflow_key(key), str(value)[:_MAX_PARAM_LENGTH]
            if key not in logged:
                params.append(Param(key, text))
            elif logged[key] != text:
                changed.append(f"{key}: {logged[key]!r} -> {text!r}")
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + _PARAMS_PER_BATCH])
        if changed:
            warnings.warn(
                f"The MLflow run {run_name!r} keeps the params it was started with (MLflow "
                f"cannot change a param); not recorded: {'; '.join(changed)}",
                stacklevel=2,
            )
        self._client = client
        self.run_id = run_id
        self.run_name = run_name

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._check_running()
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = [
            Metric(_mlflow_key(name), float(value), timestamp, int(step))
            for name, value in metrics.items()
        ]
        for i in range(0, len(entries), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=entries[i : i + _METRICS_PER_BATCH])

    def finish(self, failed: bool = False) -> None:
        client, run_id = self._client, self.run_id
        self._client = None
        self.run_name = None
        if client is None or run_id is None:
            return
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    @property
    def store_path(self) -> Path | None:
        """The SQLite file of the local store (``None`` when another store is used)."""
        return self.project_dir / "mlflow.db" if self._uses_local_store else None
