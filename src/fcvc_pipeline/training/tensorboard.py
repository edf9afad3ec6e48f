"""``fcvc train --tensorboard``: each epoch's record of ``metrics.jsonl`` as TensorBoard scalars under
``runs/<run>/tb/`` (the optional ``[tensorboard]`` extra: ``torch.utils.tensorboard`` needs the
``tensorboard`` package).

``metrics.jsonl`` stays the source of truth: when a run starts or resumes, ``tb/`` is rebuilt from its
history, then each epoch is appended as it ends, so the events always mirror the file (no epoch twice
after a resume). The step of every scalar is the epoch number.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# tag -> key of a metrics.jsonl record. The three terms of the Eq. 7 loss (nll, frame and region penalty)
# and their weighted sum, validation loss, CIDEr, BLEU-4 and <unk> count, learning rate, seconds.
SCALARS = {
    "train/loss": "train_loss",
    "train/nll": "train_nll",
    "train/frame_penalty": "train_frame_penalty",
    "train/region_penalty": "train_region_penalty",
    "train/scst_reward": "train_reward",
    "train/scst_baseline": "train_baseline",
    "train/scst_positive_advantage": "train_positive_advantage",
    "train/scst_sample_length": "train_sample_length",
    "val/loss": "val_loss",
    "val/nll": "val_nll",
    "val/cider": "val_cider",
    "val/bleu4": "val_bleu4",
    "val/unk": "val_unk",
    "lr": "lr",
    "time/seconds_per_epoch": "seconds",
}
INSTALL = "pip install 'fcvc-pipeline[tensorboard]'   (or: pip install tensorboard)"
TB_DIR = "tb"


def missing_tensorboard() -> str | None:
    """Why ``--tensorboard`` cannot work here, or None."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415 -- optional [tensorboard] extra
    except ImportError as e:
        return f"--tensorboard needs the tensorboard package, which is not installed ({e})"
    return None


class EpochScalars:
    """The run's TensorBoard events: rebuilt from ``history`` on creation, then one :meth:`write` per epoch."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]]):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 -- optional [tensorboard] extra

        self.directory = run_dir / TB_DIR
        shutil.rmtree(self.directory, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(self.directory))
        for record in history:
            self.write(record, flush=False)
        self.writer.flush()

    def write(self, record: dict[str, Any], *, flush: bool = True) -> None:
        for tag, key in SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, float(record[key]), global_step=int(record["epoch"]))
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
