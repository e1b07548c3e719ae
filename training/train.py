"""Two-phase training (Algorithm 1), resumable, on CPU or CUDA, single process or torchrun/DDP.

All randomness of a step (batch order, flips, patch positions, eps) is a function of
(seed, phase, step, rank), so a run resumed from its checkpoint takes exactly the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from training.config import ModelConfig, TrainConfig
from training.data import FacePack, pair_source, random_patches
from training.losses import ReconstructionObjective, phase2_losses
from training.models import StochasticSR
from training.profiling import StepProfiler
from training.schedule import WeightEMA, lr_factor, set_lr
from training.visuals import sample_grid, save_loss_curve
from training.weights import (
    CHECKPOINT,
    MODEL_WEIGHTS,
    load_checkpoint,
    load_model,
    save_model_weights,
    started_from,
)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    bf16: bool = False
    channels_last: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fast_bf16(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA, and on CPUs whose oneDNN has native bf16 (AVX512-BF16,
    AMX). Elsewhere (e.g. AVX2-only CPUs) bf16 convolutions fall back to a slow path: measured
    here, one paper-size step of batch 16 took minutes instead of seconds."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Single process, or one rank of a torchrun job (gloo on CPU, nccl on CUDA)."""
    device = resolve_device(cfg.device)
    rank, world = 0, 1
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: tune convs once
    native_bf16 = fast_bf16(device)
    bf16 = native_bf16 if cfg.bf16 is None else cfg.bf16
    if bf16 and not native_bf16:
        print("warning: this CPU has no native bf16 (oneDNN falls back to a conv path ~10x "
              "slower than fp32); --no-bf16 is faster here")
    channels_last = True if cfg.channels_last is None else cfg.channels_last
    return Runtime(device, rank, world, bf16, channels_last)


def compiled_objective(objective: ReconstructionObjective) -> ReconstructionObjective:
    """The same objective over torch.compile'd SR encoder, decoder and REN: they share the
    parameters (the optimiser, EMA and checkpoints see no difference), and only this objective
    calls them, so phases 2 and 3 and the sample grids never trigger a recompilation."""
    sr = nn.Module()
    sr.encoder = torch.compile(objective.sr.encoder)
    sr.decoder = torch.compile(objective.sr.decoder)
    return ReconstructionObjective(sr, torch.compile(objective.ren), objective.lambda_s,
                                   objective.icap, objective.lambda_m, objective.det_loss)


def build_model(cfg: TrainConfig) -> StochasticSR:
    return StochasticSR(ModelConfig.preset(cfg.preset, global_residual=cfg.global_residual,
                                           balanced_deconv=cfg.balanced_deconv,
                                           icap_logvar_min=cfg.icap_logvar_min))


class Trainer:
    def __init__(self, cfg: TrainConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(rt.device)
        if rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt1 = torch.optim.Adam([*self.model.sr.parameters(), *self.model.ren.parameters()],
                                     lr=cfg.lr_phase1)
        self.opt2 = torch.optim.Adam(self.model.icap.parameters(), lr=cfg.lr_phase2)
        self.opt3 = torch.optim.Adam(self.model.sr.parameters(), lr=cfg.lr_phase3)
        self.steps = {"phase1": 0, "phase2": 0, "phase3": 0}
        self.train_pack = FacePack(cfg.data, split="train")
        if len(self.train_pack) == 0:
            raise SystemExit(f"{cfg.data}: no training faces in this pack")
        self.data = pair_source(self.train_pack.hr, cfg.scale, cfg.hflip, rt.device,
                                cfg.pair_cache)
        val = FacePack(cfg.data, split="val")
        self.preview_hr = (val.hr if len(val) else self.train_pack.hr)[:4]
        self.objective1 = ReconstructionObjective(self.model.sr, self.model.ren, cfg.lambda_s,
                                          det_loss=cfg.det_loss)
        self.wrapped1: nn.Module = self.objective1
        self.compile_proven = False  # a compiled phase-1 step has completed
        if cfg.compile:
            self.wrapped1 = compiled_objective(self.objective1)
        self.wrapped_icap: nn.Module = self.model.icap
        self.objective3 = ReconstructionObjective(self.model.sr, self.model.ren, cfg.lambda_s,
                                          self.model.icap, cfg.lambda_m, cfg.det_loss)
        self.wrapped3: nn.Module | None = None  # built when phase 3 starts (phi, omega frozen)
        if rt.world > 1:
            self.wrapped1 = DDP(self.wrapped1, device_ids=self.device_ids)
            self.wrapped_icap = DDP(self.model.icap, device_ids=self.device_ids)
        self.sampler = DistributedSampler(range(len(self.data)), num_replicas=rt.world,
                                          rank=rt.rank, shuffle=True, seed=cfg.seed,
                                          drop_last=True)
        self._epoch_cache: tuple[int, list[int]] | None = None
        self.ema = WeightEMA(self.model, cfg.ema) if cfg.ema > 0 else None
        # read now, not when the run ends: a long run may outlive that folder's contents (a
        # newer model shipped into models/<scale> meanwhile)
        self.started_from = started_from(Path(cfg.init_from)) if cfg.init_from else None
        self.phase_started = 0.0  # set when each phase starts
        self.phase_elapsed = 0.0  # seconds into the phase at this step's start (phase_clock)
        self.started = time.time()
        self.wall_before = 0.0

    @property
    def device_ids(self) -> list[int] | None:
        return [self.rt.device.index] if self.rt.device.type == "cuda" else None

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt1": self.opt1.state_dict(),
                "opt2": self.opt2.state_dict(), "opt3": self.opt3.state_dict(),
                "steps": dict(self.steps),
                "ema": self.ema.state_dict() if self.ema else None,
                "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                "wall_s": self.wall_before + time.time() - self.started}

    def save(self) -> None:
        if not self.rt.main:
            return
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.out / CHECKPOINT)  # atomic: a crash never leaves half a checkpoint

    def resume(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.opt1.load_state_dict(ckpt["opt1"])
        self.opt2.load_state_dict(ckpt["opt2"])
        if "opt3" in ckpt:  # checkpoints from before phase 3 existed have none
            self.opt3.load_state_dict(ckpt["opt3"])
        self.steps = {"phase3": 0, **ckpt["steps"]}
        if self.ema and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        elif self.ema:
            self.ema.restart(self.model)
        self.wall_before = float(ckpt.get("wall_s", 0.0))
        self.trim_log()
        return True

    def init_weights(self, path: Path) -> None:
        """Start from a trained model's weights (models/<name> or a run folder), not scratch."""
        model, scale = load_model(path)
        if scale != self.cfg.scale:
            raise SystemExit(f"--init-from {path}: a x{scale} model, but --scale is "
                             f"{self.cfg.scale}")
        same_parameters = dataclasses.replace(  # these two reparametrise the same weights
            model.cfg, balanced_deconv=self.model.cfg.balanced_deconv,
            icap_logvar_min=self.model.cfg.icap_logvar_min)
        if same_parameters != self.model.cfg:
            raise SystemExit(f"--init-from {path}: its networks ({model.cfg}) differ from this "
                             f"run's ({self.model.cfg}); pass the matching --preset")
        self.model.load_state_dict(model.state_dict())

    def trim_log(self) -> None:
        """Drop log records of steps after the checkpoint: an interrupted run logged them."""
        log = self.out / "log.jsonl"
        if not (self.rt.main and log.exists()):
            return
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        kept = [r for r in records if r["step"] <= self.steps[f"phase{r['phase']}"]]
        log.write_text("".join(json.dumps(r) + "\n" for r in kept))

    # -- data --------------------------------------------------------------------------------
    def per_rank_batch(self, phase: int) -> int:  # patches: phase 1 only
        full = self.cfg.patch_batch_size if (phase == 1 and self.in_patch_stage()) else 0
        return max(1, (full or self.cfg.batch_size) // self.rt.world)

    def in_patch_stage(self) -> bool:
        return self.cfg.patch > 0 and self.steps["phase1"] < self.cfg.patch_steps

    def generator(self, phase: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(
            ((self.cfg.seed * 7919 + phase) * 1_000_003 + step) * 131 + self.rt.rank)

    def batch(self, phase: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.per_rank_batch(phase)
        per_epoch = max(1, len(self.sampler) // b)
        epoch, offset = divmod(step, per_epoch)
        key = epoch + 10_000 * phase
        if self._epoch_cache is None or self._epoch_cache[0] != key:
            self.sampler.set_epoch(key)
            self._epoch_cache = (key, list(self.sampler))
        order = self._epoch_cache[1]
        idx = [order[(offset * b + k) % len(order)] for k in range(b)]
        gen = self.generator(phase, step)
        flips = (torch.rand(b, generator=gen) < 0.5).tolist()
        x, y = self.data.batch(idx, flips)
        if phase == 1 and self.in_patch_stage():
            x, y = random_patches(x, y, self.cfg.patch, gen)
        return self.to_device(x), self.to_device(y)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.rt.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.rt.channels_last else t

    def epoch_length(self, phase: int) -> int:
        return max(1, len(self.sampler) // self.per_rank_batch(phase))

    # -- steps -------------------------------------------------------------------------------
    def autocast(self):
        if not self.rt.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=torch.bfloat16)

    def optimise(self, opt: torch.optim.Optimizer, losses: dict[str, torch.Tensor],
                 phase: int) -> dict[str, float]:
        base_lr = (self.cfg.lr_phase1, self.cfg.lr_phase2, self.cfg.lr_phase3)[phase - 1]
        factor = self.lr_factor(phase)
        set_lr(opt, base_lr, factor)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if self.ema:
            self.ema.update(self.model)
        return {**{k: float(v.detach()) for k, v in losses.items()}, "lr": base_lr * factor}

    def phase_progress(self, phase: int) -> float:
        """How far the phase is, 0..1: its steps done, or the time spent of its budget when
        that runs out first."""
        progress = self.steps[f"phase{phase}"] / max(1, self.cfg.phase_steps(phase))
        budget = self.cfg.phase_budget_s(phase)
        if budget:
            progress = max(progress, self.phase_elapsed / budget)
        return min(1.0, progress)

    def phase_clock(self) -> float:
        """Seconds into the phase at the start of this step, by rank 0's clock on every rank.
        A time budget sets both the learning rate and the last step, and each rank's own clock
        would differ (rank 0 alone writes checkpoints): the ranks would step with different
        rates, so their weights drift apart, and one would stop while the others wait for it in
        a collective."""
        self.phase_elapsed = time.time() - self.phase_started
        if self.rt.world > 1:
            elapsed = torch.tensor([self.phase_elapsed], dtype=torch.float64,
                                   device=self.rt.device)
            dist.broadcast(elapsed, src=0)
            self.phase_elapsed = float(elapsed)
        return self.phase_elapsed

    def lr_factor(self, phase: int) -> float:
        """Where the phase stands (phase_progress) -> lr multiplier."""
        return lr_factor(self.cfg.lr_schedule, self.phase_progress(phase),
                         self.steps[f"phase{phase}"],
                         min(self.cfg.warmup_steps, self.cfg.phase_steps(phase) // 5))

    def step_phase1(self) -> dict[str, float]:
        step = self.steps["phase1"]
        x, y = self.batch(1, step)
        self.model.sr.train()
        self.model.ren.train()
        losses = self.phase1_update(x, y, self.generator(1, step))
        self.steps["phase1"] += 1
        self.steps["phase2"] = self.steps["phase3"] = 0  # theta/phi moved: refit what follows
        return losses

    def phase1_update(self, x: torch.Tensor, y: torch.Tensor,
                      gen: torch.Generator) -> dict[str, float]:
        """One optimiser step on the phase-1 objective. A compiled objective that fails in its
        forward or backward (no compiler, an unsupported op; the backward is compiled on its
        first call) is dropped for the eager one, which redoes the step (optimise zeroes the
        gradients first) and every later one."""
        def update() -> dict[str, float]:
            with self.autocast():
                losses = self.wrapped1(x, y, gen)
            return self.optimise(self.opt1, losses, 1)  # backward outside autocast

        if self.compile_proven or self.wrapped1 is self.objective1 or self.rt.world > 1:
            return update()
        state, buffers = gen.get_state(), [b.clone() for b in self.objective1.buffers()]
        try:
            losses = update()
        except Exception as exc:  # noqa: BLE001 -- any compiler failure; eager then decides
            print(f"warning: --compile failed ({type(exc).__name__}: {str(exc)[:300]}); phase 1 "
                  "runs eager", flush=True)
            self.wrapped1 = self.objective1
            gen.set_state(state)  # the same draws as the failed try, and the BatchNorm
            with torch.no_grad():  # statistics from before its forward
                for b, kept in zip(self.objective1.buffers(), buffers, strict=True):
                    b.copy_(kept)
            return update()
        self.compile_proven = True  # from now on an error is the step's own: it propagates
        return losses

    @torch.no_grad()
    def fit_icap_logvar(self) -> None:
        """Before phase 2: each channel's log sigma^2 at the log of the ICAP mean's squared
        error against the REN's mean code over a few batches (ICAP.fit_logvar). An ICAP trained
        with kl starts nll with sigma far from its optimum, which the Tanh then walks slowly
        (measured on x8: log sigma^2 -4.5 after 150 steps, against ~-1.7 for a GPU nll ICAP)."""
        self.model.sr.eval()
        self.model.ren.eval()
        self.model.icap.train()  # mu_q as phase 2 sees it (batch statistics) ...
        kept = {k: v.clone() for k, v in self.model.icap.state_dict().items()}
        total, count = 0.0, 0
        for k in range(self.cfg.icap_logvar_fit_batches):
            x, y = self.batch(2, k)
            with self.autocast():
                mu_q, _ = self.model.icap(x)
                mu_r, _ = self.model.ren(y - self.model.sr(x, None))
            err = (mu_r.float() - mu_q.float()) ** 2
            total = total + err.sum((0, 2, 3))
            count += err.numel() // err.shape[1]
        self.model.icap.load_state_dict(kept)  # ... without moving its running statistics
        if self.rt.world > 1:
            dist.all_reduce(total)
            count *= self.rt.world
        self.model.icap.fit_logvar(total / count)

    def step_phase2(self) -> dict[str, float]:
        x, y = self.batch(2, self.steps["phase2"])
        self.model.sr.eval()
        self.model.ren.eval()
        self.model.icap.train()
        with self.autocast():
            mu_q, logvar_q = self.wrapped_icap(x)
            losses = phase2_losses(self.model.sr, self.model.ren, mu_q, logvar_q, x, y,
                                   self.cfg.phase2_loss)
        losses = self.optimise(self.opt2, losses, 2)
        self.steps["phase2"] += 1
        self.steps["phase3"] = 0  # omega moved: the mean path must be refitted afterwards
        return losses

    def step_phase3(self) -> dict[str, float]:
        """theta only: the phase-1 loss plus lambda_m * MSE(y, f(x, mu_pred)); phi, omega fixed."""
        step = self.steps["phase3"]
        x, y = self.batch(3, step)
        if self.wrapped3 is None:
            for p in [*self.model.ren.parameters(), *self.model.icap.parameters()]:
                p.requires_grad_(False)
            self.wrapped3 = (DDP(self.objective3, device_ids=self.device_ids)
                             if self.rt.world > 1 else self.objective3)
        self.model.sr.train()
        self.model.ren.eval()
        self.model.icap.eval()
        with self.autocast():
            losses = self.wrapped3(x, y, self.generator(3, step))
        losses = self.optimise(self.opt3, losses, 3)
        self.steps["phase3"] += 1
        return losses

    # -- loop --------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict:
        cfg = self.cfg
        if self.rt.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        for phase in (1, 2, 3):
            key = f"phase{phase}"
            todo = self.cfg.phase_steps(phase) - self.steps[key]
            if todo <= 0:
                continue
            budget = self.cfg.phase_budget_s(phase)
            bar = self.progress_bar(phase, budget, disable=not (progress and self.rt.main))
            step_fn = (self.step_phase1, self.step_phase2, self.step_phase3)[phase - 1]
            profiler = StepProfiler(self.out, cfg.profile_steps if phase == 1 and self.rt.main
                                    else 0, self.rt.device, self.per_rank_batch(1))
            tick = self.phase_started = time.time()
            self.phase_elapsed = 0.0
            if phase == 2 and self.steps[key] == 0 and cfg.icap_logvar_fit_batches > 0:
                self.fit_icap_logvar()
            if self.ema and self.steps[key] == 0:
                self.ema.restart(self.model)
            for _ in range(todo):
                if budget and self.phase_clock() > budget:
                    bar.update(100 - bar.n)
                    if self.rt.main:
                        print(f"phase {phase}: time budget of {budget:.0f} s reached at step "
                              f"{self.steps[key]}")
                    break
                images = self.per_rank_batch(phase) * self.rt.world
                losses = profiler.step(step_fn)
                if not all(math.isfinite(v) for v in losses.values()):
                    raise FloatingPointError(f"{key} step {self.steps[key]}: loss {losses}")
                now = time.time()
                speed = images / max(now - tick, 1e-9)
                tick = now
                if budget:
                    bar.update(100 * self.phase_progress(phase) - bar.n)
                    bar.set_postfix(step=self.steps[key], loss=f"{losses['loss']:.4f}",
                                    img_s=f"{speed:.1f}")
                else:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", img_s=f"{speed:.1f}")
                self.after_step(phase, losses, speed)
            profiler.close()
            bar.close()
            if self.ema:  # the phase ends on its averaged weights; the next phase starts there
                self.ema.copy_to(self.model)
            self.save()
        summary = self.summary()
        if self.rt.main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            save_model_weights(self.model, self.out / MODEL_WEIGHTS, scale=self.cfg.scale)
            save_loss_curve(self.out / "log.jsonl", self.out / "loss_curve.png")
        if self.rt.world > 1:  # the ranks leave together, none while rank 0 still writes
            dist.barrier()
        return summary

    def progress_bar(self, phase: int, budget_s: float, disable: bool):
        """A bar over the phase's steps; with a time budget, over the percentage of the phase
        done by steps or by time, whichever is further (a budgeted run often has an
        open-ended step count, whose bar would promise weeks)."""
        from tqdm import tqdm

        key = f"phase{phase}"
        if not budget_s:
            return tqdm(total=self.cfg.phase_steps(phase), initial=self.steps[key],
                        desc=f"phase {phase}", unit="step", disable=disable, dynamic_ncols=True)
        return tqdm(total=100.0, desc=f"phase {phase} (budget {tqdm.format_interval(budget_s)})",
                    disable=disable, dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    def after_step(self, phase: int, losses: dict[str, float], speed: float) -> None:
        step = self.steps[f"phase{phase}"]
        if not self.rt.main:
            return
        if step % self.cfg.log_every == 0 or step == 1:
            record = {"phase": phase, "step": step, "images_per_s": round(speed, 3),
                      "wall_s": round(self.wall_before + time.time() - self.started, 1),
                      **{k: round(v, 6) for k, v in losses.items()}}
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if step % self.cfg.ckpt_every == 0:
            self.save()
            save_loss_curve(self.out / "log.jsonl", self.out / "loss_curve.png")
        every = self.cfg.sample_every or self.epoch_length(phase)
        if step % every == 0:
            self.write_grid(f"phase{phase}_step{step:06d}")

    def write_grid(self, tag: str) -> None:
        path = self.out / "samples" / f"{tag}.png"
        path.parent.mkdir(exist_ok=True)
        sample_grid(self.model, self.preview_hr, self.cfg.scale, self.rt.device).save(path)

    def summary(self) -> dict:
        return {"steps": dict(self.steps), "scale": self.cfg.scale, "preset": self.cfg.preset,
                "global_residual": self.cfg.global_residual, "batch_size": self.cfg.batch_size,
                "patch": self.cfg.patch, "patch_steps": self.cfg.patch_steps,
                "device": str(self.rt.device), "world_size": self.rt.world,
                "bf16": self.rt.bf16, "wall_s": round(self.wall_before + time.time()
                                                      - self.started, 1),
                "data": {"pack": str(self.cfg.data), "train_faces": len(self.train_pack),
                         "pack_meta": self.train_pack.meta},
                "phase2_loss": self.cfg.phase2_loss,
                **({"started_from": self.started_from} if self.started_from else {})}


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True) -> dict:
    rt = setup_runtime(cfg)
    try:
        return run_trainer(cfg, rt, resume, progress)
    finally:
        if rt.world > 1:
            # the DDP wrappers hold the process group: free them (and any cycle through them)
            # first, so that no gloo work outlives it into the interpreter's shutdown
            gc.collect()
            dist.destroy_process_group()


def run_trainer(cfg: TrainConfig, rt: Runtime, resume: bool, progress: bool) -> dict:
    trainer = Trainer(cfg, rt)
    if resume and trainer.resume():
        if rt.main:
            print(f"resumed from {trainer.out / CHECKPOINT} at {trainer.steps}")
    elif cfg.init_from:
        trainer.init_weights(Path(cfg.init_from))
        if rt.main:
            print(f"starting from the weights of {cfg.init_from}")
    return trainer.run(progress)
