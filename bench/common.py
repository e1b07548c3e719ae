"""Helpers shared by the benchmarks: machine facts, timing statistics, test faces (real ones
for PSNR, the astronaut as an upload), and pausing a background training job while timing.

Pausing: on a shared 2-core machine a training run (`python -m training.cli`, `facesr-train`,
`facesr-eval`, ...) takes both cores, and any timing taken beside it is meaningless. With
`--pause-training` the benchmarks send it SIGSTOP for the timed part only, and SIGCONT in a
`finally` block and from a watchdog timer (so a pause never outlasts `max_s`, even if the
benchmark hangs). The patterns start with a bracket (`[t]raining`) so that they never match the
shell that started the benchmark. A stopped process keeps its memory: beside a paper-size CPU
training stage (~13 GB at batch 64), a benchmark that needs more than the rest of the machine's
24 GB (`bench.training` at batch 64 does) gets the training, the largest process, killed by the
kernel's OOM killer. Check `free -g` first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TRAINING_PATTERN = r"[t]raining\.cli|bin/[f]acesr-(train|eval|export|prepare)"
CELEBA = ROOT.parent / "shared" / "data" / "celeba" / "img_align_celeba"
CELEBA_CROP = 178  # aligned CelebA: centre 178x178 square, then 128x128 (as training does)


def machine() -> dict[str, str]:
    """CPU model, cores, memory and the versions that matter for the figures."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu, "cores": str(os.cpu_count()), "memory": mem,
            "python": platform.python_version()}
    for mod in ("numpy", "torch", "onnxruntime"):
        with contextlib.suppress(ImportError):
            info[mod] = __import__(mod).__version__
    return info


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q:g}": float("nan") for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


def timeit(fn, *, min_reps: int = 3, min_s: float = 2.0, warmup: int = 1,
           max_reps: int = 1000) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then at least min_reps and min_s of calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps
                                     or time.perf_counter() - start < min_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _signal_training(sig: signal.Signals) -> list[int]:
    out = subprocess.run(["pgrep", "-f", TRAINING_PATTERN], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split() if int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return pids


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process and its children) so far."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    me = psutil.Process()
    own = sum(me.cpu_times()[:4])  # user, system, and those of children already waited for
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            own += sum(child.cpu_times()[:2])
    return busy, own


def foreign_cpu_pct(start: tuple[float, float], wall: float) -> float | None:
    """Share of the machine's CPU used by other processes since `start` (0-100)."""
    try:
        busy, own = _busy_seconds()
    except Exception:  # noqa: BLE001 - psutil missing: unknown
        return None
    return max(0.0, 100 * ((busy - start[0]) - (own - start[1])) / (wall * (os.cpu_count() or 1)))


class CpuProbe:
    """Foreign CPU share (other processes) from creation to each `.pct()` call."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        try:
            self.start: tuple[float, float] | None = _busy_seconds()
        except Exception:  # noqa: BLE001 - psutil missing
            self.start = None

    def pct(self) -> float | None:
        if self.start is None:
            return None
        return foreign_cpu_pct(self.start, time.perf_counter() - self.t0)


@contextlib.contextmanager
def training_paused(enabled: bool, max_s: float = 330.0) -> Iterator[dict]:
    """SIGSTOP the background training for the block (at most max_s), SIGCONT after."""
    state: dict = {"paused": [], "overran": False}
    try:
        cpu_start = _busy_seconds()
    except Exception:  # noqa: BLE001
        cpu_start = None
    if not enabled:
        start = time.perf_counter()
        try:
            yield state
        finally:
            if cpu_start:
                state["foreign_cpu_pct"] = foreign_cpu_pct(cpu_start,
                                                           time.perf_counter() - start)
        return

    def resume_on_overrun() -> None:
        state["overran"] = True
        _signal_training(signal.SIGCONT)
        print(f"WARNING: pause exceeded {max_s:.0f} s; training resumed, timings after this "
              "point share the CPU", file=sys.stderr, flush=True)

    timer = threading.Timer(max_s, resume_on_overrun)
    timer.daemon = True
    stopped: set[int] = set(_signal_training(signal.SIGSTOP))
    done = threading.Event()

    def stop_newcomers() -> None:  # a chain script may start the next step meanwhile
        while not done.wait(0.5):
            if state["overran"]:
                return
            stopped.update(_signal_training(signal.SIGSTOP))

    watcher = threading.Thread(target=stop_newcomers, daemon=True)
    timer.start()
    watcher.start()
    start = time.perf_counter()
    try:
        time.sleep(1.0)  # let the stopped processes leave the cores
        yield state
    finally:
        done.set()
        watcher.join()
        timer.cancel()
        _signal_training(signal.SIGCONT)
        state["paused"] = sorted(stopped)
        state["seconds"] = time.perf_counter() - start
        if cpu_start:
            state["foreign_cpu_pct"] = foreign_cpu_pct(cpu_start, state["seconds"])
        print(f"(training pids {state['paused']} paused for {state['seconds']:.0f} s; other "
              f"processes used {state.get('foreign_cpu_pct') or 0:.1f}% of the CPU meanwhile)",
              file=sys.stderr, flush=True)


def celeba_faces(count: int, offset: int = 0, folder: Path = CELEBA) -> list:
    """`count` aligned CelebA faces as 128x128 HR Pillow images (read now, never stored).

    Takes files from the end of the sorted listing (CelebA's own test ids are the last ones),
    skipping `offset` of them, so calibration and evaluation sets can be kept apart.
    """
    from PIL import Image

    from facesr_core.degradation import to_hr

    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no CelebA faces in {folder}")
    chosen = files[::-1][offset:offset + count]
    faces = []
    for f in chosen:
        with Image.open(f) as img:
            faces.append(to_hr(img, crop=CELEBA_CROP))
    return faces


def lr_face(scale: int = 8) -> bytes:
    """The scikit-image astronaut's face, degraded to the LR size of `scale`, as PNG."""
    from PIL import Image
    from skimage import data

    from facesr_core.degradation import degrade, to_hr

    hr = to_hr(Image.fromarray(data.astronaut()[25:205, 150:330]))
    buf = io.BytesIO()
    degrade(hr, scale).save(buf, "PNG")
    return buf.getvalue()


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
