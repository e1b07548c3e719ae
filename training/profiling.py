"""Where a training step's time goes: `facesr-train --profile-steps N` runs N phase-1 steps under
torch.profiler (after a few warm-up steps, so that cuDNN's autotuning and a compile are not
counted) and writes profile.txt (torch's operator table) and profile.json (the summary below)
into the run folder.

On a GPU the question is how busy the device is: `device_busy_fraction` is the kernels' time
(and copies') over the wall time of the profiled steps. Far below 1, the host (Python, launches,
synchronisation) starves the GPU; near 1, the kernels themselves are slow and `top_kernels` says
which. On a CPU it lists the operators by their own CPU time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, supported_activities

WARMUP_STEPS = 5  # steps before the profiled ones: cuDNN benchmark and torch.compile run here
TOP = 15  # rows per list in profile.json


def summarise(events: Iterable, wall_s: float, steps: int, images: int, on_device: bool) -> dict:
    """profile.json's content from key_averages() rows (key, count, device_type,
    self_cpu_time_total and self_device_time_total, in microseconds)."""
    events = list(events)
    ops = [e for e in events if e.device_type == DeviceType.CPU]

    def rows(selected: list, time_of: Callable) -> list[dict]:
        total = sum(time_of(e) for e in selected) or 1.0
        ranked = sorted(selected, key=time_of, reverse=True)[:TOP]
        return [{"name": e.key, "calls": e.count, "ms_per_step": round(time_of(e) / 1e3 / steps, 3),
                 "share": round(time_of(e) / total, 4)} for e in ranked if time_of(e) > 0]

    summary = {"steps": steps, "wall_s": round(wall_s, 4),
               "images_per_s": round(images / wall_s, 2) if wall_s > 0 else None}
    if on_device:
        kernels = [e for e in events if e.device_type != DeviceType.CPU]
        busy_s = sum(e.self_device_time_total for e in kernels) / 1e6
        summary |= {"device_busy_s": round(busy_s, 4),
                    "device_busy_fraction": round(busy_s / wall_s, 4) if wall_s > 0 else None,
                    "top_kernels": rows(kernels, lambda e: e.self_device_time_total),
                    "top_ops_by_device_time": rows(ops, lambda e: e.self_device_time_total)}
    summary["top_ops_by_cpu_time"] = rows(ops, lambda e: e.self_cpu_time_total)
    return summary


class StepProfiler:
    """Wraps phase-1 steps: the first WARMUP_STEPS run plain, the next `steps` under the
    profiler, then it writes its files and steps aside. A profiler failure is reported and
    never stops the training."""

    def __init__(self, out: Path, steps: int, device: torch.device, images_per_step: int):
        self.out, self.steps, self.images_per_step = Path(out), steps, images_per_step
        self.on_device = device.type == "cuda" and ProfilerActivity.CUDA in supported_activities()
        self.calls, self.done = 0, steps <= 0
        self.prof: profile | None = None
        self.started = 0.0

    def step(self, step_fn: Callable[[], dict]) -> dict:
        if self.done:
            return step_fn()
        if self.calls == WARMUP_STEPS:
            self._start()
        losses = step_fn()  # each step reads its loss back, so the device has finished it
        self.calls += 1
        if self.prof is not None and self.calls == WARMUP_STEPS + self.steps:
            self._finish()
        return losses

    def close(self) -> None:
        """At the phase's end: a profile cut short (the phase ended first) is written with the
        steps it has, and the profiler never outlives the phase."""
        if self.prof is not None:
            self._finish()
        self.done = True

    def _start(self) -> None:
        try:
            activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self.on_device
                                                  else [])]
            self.prof = profile(activities=activities, record_shapes=True)
            self.prof.__enter__()
            self.started = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 -- the profile is optional, the training is not
            self._give_up(exc)

    def _finish(self) -> None:
        wall_s = time.perf_counter() - self.started
        steps = self.calls - WARMUP_STEPS  # 0: started, but no step ran under it
        try:
            self.prof.__exit__(None, None, None)
            if steps:
                self._write(self.prof.key_averages(), wall_s, steps)
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)
        self.prof, self.done = None, True

    def _write(self, events, wall_s: float, steps: int) -> None:
        sort_by = "self_device_time_total" if self.on_device else "self_cpu_time_total"
        (self.out / "profile.txt").write_text(events.table(sort_by=sort_by, row_limit=40))
        summary = summarise(events, wall_s, steps, steps * self.images_per_step, self.on_device)
        (self.out / "profile.json").write_text(json.dumps(summary, indent=2))
        busy = summary.get("device_busy_fraction")
        print(f"profile: {steps} phase-1 steps in {wall_s:.2f} s"
              + (f", device busy {busy:.0%} of it" if busy is not None else "")
              + f"; {self.out / 'profile.json'}", flush=True)

    def _give_up(self, exc: Exception) -> None:
        print(f"warning: --profile-steps: the profiler failed ({type(exc).__name__}: "
              f"{str(exc)[:200]}); training goes on without it", flush=True)
        self.prof, self.done = None, True


def describe(summary: dict) -> str:
    """One paragraph of profile.json for a terminal (scripts/device/after.sh prints it)."""
    head = (f"{summary['steps']} phase-1 steps, {summary['images_per_s']} images/s under the "
            "profiler")
    if summary.get("device_busy_fraction") is not None:
        head += f"; device busy {summary['device_busy_fraction']:.0%} of the wall time"
    rows = summary.get("top_kernels") or summary["top_ops_by_cpu_time"]
    top = "; ".join(f"{r['name'][:60]} {r['share']:.0%}" for r in rows[:5])
    return f"{head}\n  top: {top}"


if __name__ == "__main__":  # python -m training.profiling RUN/profile.json
    print(describe(json.loads(Path(sys.argv[1]).read_text())))
