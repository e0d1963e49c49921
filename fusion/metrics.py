"""Segmentation metrics from a confusion matrix (ignored pixels never counted)."""
from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix; rows = truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.n = num_classes
        self.ignore = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @classmethod
    def from_matrix(cls, mat: torch.Tensor) -> "ConfusionMatrix":
        """Wrap an already accumulated ``(C, C)`` matrix (e.g. a sum of per-frame matrices)."""
        cm = cls(mat.shape[-1])
        cm.mat = mat.long()
        return cm

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore
        idx = target[keep].long() * self.n + pred[keep].long()
        self.mat += torch.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n).cpu()

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for classes absent from both truth and prediction."""
        tp = self.mat.diag().double()
        denom = self.mat.sum(0).double() + self.mat.sum(1).double() - tp
        return torch.where(denom > 0, tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over classes that occur in the truth or the prediction."""
        return float(self.iou().nanmean())

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(self.mat.diag().sum() / total) if total > 0 else float("nan")
