"""Metric logs of a run: ``log.csv`` (always readable) or TensorBoard (when installed)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from ldmkit.errors import TrainingError

log = logging.getLogger(__name__)

CSV_FILE = "log.csv"


class CSVLogger:
    """One row per logged step: step, loss, lr, images_per_s, then each loss term (fixed columns per stage)."""

    def __init__(self, out_dir: Path, terms: list[str], resume_step: int) -> None:
        self.path = out_dir / CSV_FILE
        self.columns = ["step", "loss", "lr", "images_per_s", *[t for t in terms if t != "loss"]]
        try:
            kept = self._rows_up_to(resume_step) if resume_step > 0 else []
            self._fh = self.path.open("w", newline="", encoding="utf-8")
        except OSError as exc:
            raise TrainingError(f"cannot write {self.path} ({exc.strerror or exc})") from None
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        try:  # a full disk shows here, at the first flush, not at open
            self._writer.writeheader()
            self._writer.writerows(kept)
            self._fh.flush()
        except OSError as exc:
            self._fh.close()
            raise TrainingError(f"cannot write {self.path} ({exc.strerror or exc})") from None

    def _rows_up_to(self, step: int) -> list[dict[str, str]]:
        # rows after the checkpoint were made by a run that died; the resumed run writes them again
        if not self.path.is_file():
            return []
        with self.path.open(newline="", encoding="utf-8") as fh:
            return [row for row in csv.DictReader(fh) if row.get("step", "").isdigit() and int(row["step"]) <= step]

    def write(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **{k: _fmt(v) for k, v in values.items()}}
        try:
            self._writer.writerow(row)
            self._fh.flush()
        except OSError as exc:
            raise TrainingError(f"cannot write {self.path} ({exc.strerror or exc})") from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:  # the last buffered row could not be written
            raise TrainingError(f"cannot write {self.path} ({exc.strerror or exc})") from None


class TensorBoardLogger:
    """Scalars under ``train/<name>`` in ``out_dir/tensorboard``."""

    def __init__(self, out_dir: Path, terms: list[str], resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError(
                "log: 'tensorboard' needs the tensorboard package (pip install tensorboard); or use log: csv"
            ) from None
        self._writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"train/{key}", float(value), step)

    def close(self) -> None:
        self._writer.close()


def make_logger(kind: str, out_dir: Path, terms: list[str], resume_step: int) -> CSVLogger | TensorBoardLogger:
    """The logger named by the spec's ``log`` field."""
    if kind == "tensorboard":
        return TensorBoardLogger(out_dir, terms, resume_step)
    return CSVLogger(out_dir, terms, resume_step)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
