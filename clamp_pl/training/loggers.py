"""A CSV logger whose ``metrics.csv`` survives a second writer: a resumed run, or the fresh process that
``ddp_spawn`` starts for ``trainer.test`` after ``fit``. Lightning's writer starts with no known columns and,
when it meets an existing file, rewrites it with only its own columns, which fails on the older rows."""

from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger as _CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning's writer warns about a non-empty folder and deletes metrics.csv here: the run dir always holds
        # Hydra's files (a false warning every run), and the earlier rows are what this writer keeps
        pass

    def _record_new_keys(self) -> set[str]:
        if not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys.extend(next(csv.reader(fh), []))
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` that appends to an existing ``metrics.csv`` (union of columns)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
