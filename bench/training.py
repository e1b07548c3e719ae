"""Training throughput (images/s) of a phase-1 step on the current device, per variant:

naive:     fp32, contiguous tensors, the encoder run twice (once per phase-1 path)
optimised: the encoder run once for both paths, channels_last, bf16 autocast where facesr-train
           uses it (CUDA, and CPUs with native bf16: training.train.fast_bf16), else fp32: what
           facesr-train does on this device
compiled:  optimised, with the SR network and the REN through torch.compile (its first step,
           the compilation, is not timed)
The malloc settings of `facesr-train` (docs/method.md) are a property of the process: run this
script with and without them (`--malloc default`) to see their share; the figure is printed with it.

    python -m bench.training --presets tiny paper --batch 16 --steps 5 [--pause-training]
    python -m bench.training --presets paper --batch 64 128 --variants optimised compiled \
        --device cuda --json runs/training_cuda.json          # the GPU's levers
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import training_paused
from training.cli import MALLOC_ENV
from training.config import ModelConfig
from training.losses import reconstruction_losses, reparameterize
from training.models import StochasticSR
from training.train import fast_bf16


def naive_phase1(model: StochasticSR, x, y, gen):
    y_d = model.sr(x, None)  # full pass
    loss_d = F.mse_loss(y_d, y)
    mu, logvar = model.ren((y - y_d).detach())
    y_s = model.sr(x, reparameterize(mu, logvar, gen))  # second full pass: encoder again
    return loss_d + F.l1_loss(y_s, y)


VARIANTS = ("naive", "optimised", "compiled")


def time_steps(preset: str, variant: str, batch: int, steps: int, device: torch.device,
               side: int = 128) -> list[float]:
    torch.manual_seed(0)
    optimised = variant != "naive"
    model = StochasticSR(ModelConfig.preset(preset)).to(device).train()
    opt = torch.optim.Adam([*model.sr.parameters(), *model.ren.parameters()], lr=2.5e-4)
    sr, ren = model.sr, model.ren
    if variant == "compiled":
        sr, ren = torch.compile(sr), torch.compile(ren)
    x = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    y = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    if optimised:
        model = model.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if optimised and fast_bf16(device)
            else contextlib.nullcontext())
    times = []
    for _ in range(steps + 1):  # the first step is warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with cast:
            loss = (reconstruction_losses(sr, ren, x, y, 1.0, gen)["loss"] if optimised
                    else naive_phase1(model, x, y, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def rate(preset: str, variant: str, batch: int, steps: int, device: torch.device,
         pause: bool) -> float | str:
    """Images/s (median step), or why the variant could not run (e.g. no compiler for
    torch.compile, or out of memory at this batch)."""
    try:
        with training_paused(pause):
            times = time_steps(preset, variant, batch, steps, device)
    except Exception as exc:  # noqa: BLE001 - a failed variant is a result, the others go on
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"],
                   help="model presets to time (default: tiny paper)")
    p.add_argument("--batch", type=int, nargs="+", default=[16],
                   help="batch sizes to time (default: 16)")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per row, after one untimed warm-up step (default 5)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["naive", "optimised"],
                   help="step variants (module docstring; default: naive optimised)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                   help="tuned: facesr-train's malloc settings (the process restarts with "
                        "them); default: glibc's own")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--pause-training", action="store_true",
                   help="SIGSTOP a background facesr-train while timing (bench/common.py)")
    a = p.parse_args()
    if a.malloc == "tuned" and not all(k in os.environ for k in MALLOC_ENV):
        os.execve(sys.executable, [sys.executable, "-m", "bench.training", *sys.argv[1:]],
                  {**os.environ, **MALLOC_ENV})
    device = torch.device(a.device)
    head = (f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
            f"steps={a.steps} malloc={a.malloc} native_bf16={fast_bf16(device)}")
    if device.type == "cuda":
        head += f" gpu={torch.cuda.get_device_name(device)}"
    print(head)
    print(f"| preset | batch | {' | '.join(f'{v} img/s' for v in a.variants)} |\n"
          f"|---|---|{'---|' * len(a.variants)}")
    rows = []
    for preset in a.presets:
        for batch in a.batch:
            rates = {v: rate(preset, v, batch, a.steps, device, a.pause_training)
                     for v in a.variants}
            rows.append({"preset": preset, "batch": batch, "images_per_s": rates})
            cells = [f"{r:.2f}" if isinstance(r, float) else r for r in rates.values()]
            print(f"| {preset} | {batch} | {' | '.join(cells)} |", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"machine": head, "rows": rows}, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
