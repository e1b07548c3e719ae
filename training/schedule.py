"""Learning-rate schedule and weight averaging (ours; the paper trains with a constant Adam lr).

Both are functions of where a phase stands, so a resumed run continues exactly: the learning rate
is recomputed from (step, total, elapsed time) at every step, and the EMA is in the checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from training.config import LR_SCHEDULES as SCHEDULES


def lr_factor(schedule: str, progress: float, step: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up over `warmup_steps`, then constant or
    a cosine from 1 to 0 over the phase (`progress` in [0, 1]: steps done, or time spent when a
    time budget ends the phase first)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose from {SCHEDULES}")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def set_lr(opt: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in opt.param_groups:
        group["lr"] = base_lr * factor


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm buffers.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the n updates since the last
    `restart`, so a phase of a few hundred steps is not dominated by its starting weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self._d = decay, decay
        self.averaged = AveragedModel(model, avg_fn=self._average, use_buffers=True)

    def _average(self, avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return avg * self._d + new.detach() * (1.0 - self._d)

    def restart(self, model: nn.Module) -> None:
        """Start averaging afresh from the model's current weights (at a phase start)."""
        self.averaged.module.load_state_dict(model.state_dict())
        self.averaged.n_averaged.zero_()

    def update(self, model: nn.Module) -> None:
        n = int(self.averaged.n_averaged)  # a CPU tensor: read once per step, not per tensor
        self._d = min(self.decay, (1.0 + n) / (10.0 + n))
        self.averaged.update_parameters(model)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.averaged.module.state_dict())

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
