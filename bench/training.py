"""Training throughput (images/s) for both presets on the current device: naive vs optimised.

naive:     fp32, contiguous tensors, the encoder run twice (once per phase-1 path)
optimised: the encoder run once for both paths, channels_last, bf16 autocast
The malloc settings of `facesr-train` (docs/method.md) are a property of the process: run this
script with and without them (`--malloc default`) to see their share; the figure is printed with it.

    python -m bench.training --presets tiny paper --batch 16 --steps 5 [--pause-training]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import training_paused
from training.cli import MALLOC_ENV
from training.config import ModelConfig
from training.losses import reconstruction_losses, reparameterize
from training.models import StochasticSR


def naive_phase1(model: StochasticSR, x, y, gen):
    y_d = model.sr(x, None)  # full pass
    loss_d = F.mse_loss(y_d, y)
    mu, logvar = model.ren((y - y_d).detach())
    y_s = model.sr(x, reparameterize(mu, logvar, gen))  # second full pass: encoder again
    return loss_d + F.l1_loss(y_s, y)


def time_steps(preset: str, optimised: bool, batch: int, steps: int, device: torch.device,
               side: int = 128) -> list[float]:
    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset(preset)).to(device).train()
    opt = torch.optim.Adam([*model.sr.parameters(), *model.ren.parameters()], lr=2.5e-4)
    x = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    y = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    if optimised:
        model = model.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if optimised
            else contextlib.nullcontext())
    times = []
    for _ in range(steps + 1):  # the first step is warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with cast:
            loss = (reconstruction_losses(model.sr, model.ren, x, y, 1.0, gen)["loss"] if optimised
                    else naive_phase1(model, x, y, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--malloc", choices=["tuned", "default"], default="tuned")
    p.add_argument("--pause-training", action="store_true",
                   help="SIGSTOP a background facesr-train while timing (bench/common.py)")
    a = p.parse_args()
    if a.malloc == "tuned" and not all(k in os.environ for k in MALLOC_ENV):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    device = torch.device(a.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batch={a.batch} steps={a.steps} malloc={a.malloc}")
    print("| preset | naive img/s | optimised img/s | speed-up |\n|---|---|---|---|")
    for preset in a.presets:
        rates = {}
        for optimised in (False, True):
            with training_paused(a.pause_training):
                times = time_steps(preset, optimised, a.batch, a.steps, device)
            rates[optimised] = a.batch / statistics.median(times)
        print(f"| {preset} | {rates[False]:.2f} | {rates[True]:.2f} | "
              f"{rates[True] / rates[False]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
