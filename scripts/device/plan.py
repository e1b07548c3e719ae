"""The device sequence as data: each call's command, carried paths and timeout, the limits it
must fit, and the time plan. `check` measures what would travel; `calls` prints the calls.

    python scripts/device/plan.py check   # sizes of every call, files back, the time plan
    python scripts/device/plan.py calls   # the device calls to make, as JSON, in order
    python scripts/device/plan.py calls --bench   # with the onnxruntime-gpu check and benchmarks
    python scripts/device/plan.py pack-budget   # MiB left for the pack in the train call
    python scripts/device/plan.py scales   # the scales the session trains (SCALES, --scales)

Without --bench (the default) the session only trains: the calls are train and finish, and
training gets every second the time plan leaves (train_seconds). --bench adds the ort calls and
the finish call's service benchmarks on CUDA, which leave TRAIN_S (400 s) to training.

What travels in a call: the files in the working tree that git tracks or does not ignore, plus
the carried (ignored) paths. models/ and docs/*.png are out of the tree during the sequence
(models_out.sh); before that, `check` counts the tree as it will be.
Durations other than the limits are estimates (README "GPU"): replace them with the figures of
the first GPU session (the tool reports each call's wall time).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script, plan.py's own folder leads the path
MIB = 2**20

# The device tool's limits.
TRAVEL_LIMIT = 64 * MIB
RETURN_FILES, RETURN_FILE_LIMIT, RETURN_TOTAL = 8, 16 * MIB, 64 * MIB
CALL_LIMIT_S = 600
WARM_S = 30
DEVICE_BUDGET_S = 900

# Estimates (seconds) behind the time plan.
START_S = 120                # a fresh machine: "1-2 minutes"
GAP_S = 20                   # from one call's answer to the next call (warm for WARM_S only)
TRANSFER_S = (10, 0.35)      # per call: fixed + per MiB carried (upload), either way
TRAIN_S = 400                # on_device.sh / train_all.sh default: wall time per scale (--bench)
TRAIN_END_S = 20             # after the budget: checkpoint, weights, loss curve
WATCH_S = 75                 # `train` watches the first steps (START_WAIT_S)
ORT_STAGE_S, ORT_INSTALL_S = 5, 60
COLLECT_S, BENCH_S = 20, 170
JUDGE_S = 120                # on_device.sh judge: evaluation + principal basis, three at once
MARGIN_S = 90                # what must be left of DEVICE_BUDGET_S at the end

# What may be carried: the files prepare.sh writes, and their caps.
PACK, WHEELS, INIT, BENCH_MODELS, ORT = (".device/pack.npz", ".device/wheels", ".device/init",
                                         ".device/models", ".device/ort")
JUDGE = ".device/judge.npz"  # pack.py --judge: the held-out faces, for judging on the GPU
SUMS = f"{ORT}/SHA256SUMS"
INIT_SCALE_MIB = 4.85        # one scale's bf16 weights in .device/init (4.5 MiB measured)
INIT_SOURCE = "source.json"  # beside them: the sha256 of the weights they copy
CAPS_MIB = {PACK: 58.0, WHEELS: 4.0, BENCH_MODELS: 18.0, SUMS: 0.01, ORT: 61.0, JUDGE: 20.0}
WEIGHTS_MIB, RUN_TAR_MIB, BENCH_TAR_MIB = 9.4, 4.0, 1.0  # the finish call's files (paper size)

# The scales a session trains: those short of their targets (issue "Quality": x4 and x8; x16
# met its own on the CPU). The processes share one GPU-bound ~650 images/s (README "Measured"),
# so two get ~1.5x the steps each that three would, and one scale's weights fewer leave ~550
# more faces in the pack. SCALES="8 4 16" (or --scales) trains all three.
SCALES = (8, 4)


def init_mib(scales: tuple[int, ...]) -> float:
    return INIT_SCALE_MIB * len(scales)


def shipped_weights(manifest_json: str) -> dict[str, str]:
    """{part: sha256} of the weights a model's manifest.json lists (facesr-export writes them),
    read by the manifest's own schema."""
    try:  # here, not at the top: plan.py's other commands need the standard library only
        from facesr_core.manifest import Manifest
    except ImportError as err:
        raise SystemExit(f"plan.py: reading models/*/manifest.json needs the project's "
                         f"environment ({err}): activate .venv, or pip install -e .") from err

    weights = Manifest.model_validate_json(manifest_json).weights
    return {part: entry.sha256 for part, entry in weights.items()}


def stale_init(scales: tuple[int, ...], root: Path = ROOT) -> list[str]:
    """The scales whose .device/init copy was not made from models/x<s> as committed (a model
    shipped since prepare.sh ran): the session would train on from the weights before. Read
    from HEAD, which keeps the manifests while models_out.sh has the files out."""
    stale = []
    for s in scales:
        shown = subprocess.run(["git", "show", f"HEAD:models/x{s}/manifest.json"], cwd=root,
                               capture_output=True, text=True)
        if shown.returncode:  # not a git checkout, or no such model committed: nothing to match
            continue
        made = root / INIT / f"x{s}" / INIT_SOURCE
        if not made.is_file() or json.loads(made.read_text()) != shipped_weights(shown.stdout):
            stale.append(f"{INIT}/x{s} is not a copy of models/x{s} as committed: commit "
                         "models/, then run scripts/device/prepare.sh again")
    return stale


def back_files(scales: tuple[int, ...]) -> dict[str, float]:
    """MiB of each file the finish call returns: per scale its weights and run.tar.gz."""
    per_scale = {f"x{s}/{name}": mib for s in scales
                 for name, mib in (("model.safetensors", WEIGHTS_MIB), ("run.tar.gz", RUN_TAR_MIB))}
    return {**per_scale, "bench.tar.gz": BENCH_TAR_MIB}


@dataclass
class Call:
    name: str
    command: str
    carry: list[str]
    timeout_s: int
    command_s: float  # expected, without transfers
    back: dict[str, float] = field(default_factory=dict)
    train_s: int = 0  # the train call: the training's wall seconds it starts
    benchmarks: bool = False  # the finish call: runs the service benchmarks after collecting
    judges: bool = False  # the finish call: evaluates and fits the bases on the GPU (judge)

    def tool_args(self) -> dict:
        return {"command": self.command, "carry": self.carry, "timeout_s": self.timeout_s}


def ort_parts(root: Path = ROOT) -> list[str]:
    """The onnxruntime-gpu parts prepare.sh made, in order (one per call); else one assumed."""
    found = sorted(p.relative_to(root).as_posix() for p in (root / ORT).glob("*.part*"))
    return found or [f"{ORT}/onnxruntime-gpu.tar.xz.part01"]


def calls(init_from: bool = True, root: Path = ROOT, bench: bool = False,
          train_s: int | None = None, real: bool = True,
          scales: tuple[int, ...] = SCALES) -> list[Call]:
    """The sequence: train, (with `bench`) the ort calls, finish. `train_s`: the training's
    wall seconds (default: TRAIN_S with `bench`, else train_seconds()). Both the train and
    the finish call name the `scales` (on_device.sh's own default is all three)."""
    if train_s is None:
        train_s = TRAIN_S if bench else train_seconds(init_from, root, real, scales)
    named = f"SCALES='{' '.join(map(str, scales))}' "
    env = named + ("INIT_FROM=1 " if init_from else "") + (f"TRAIN_S={train_s} "
                                                           if train_s != TRAIN_S else "")
    train = Call("train", f"{env}bash scripts/device/on_device.sh train",
                 [PACK, WHEELS] + ([INIT] if init_from else []), 240, WATCH_S + 15,
                 train_s=train_s)
    back = back_files(scales)
    if not bench:
        return [train, Call("finish", f"{named}BENCH=0 bash scripts/device/on_device.sh finish",
                            [JUDGE], CALL_LIMIT_S, 0.0, back, judges=True)]
    parts = ort_parts(root)
    ort = [Call(f"ort{k + 1}", "bash scripts/device/on_device.sh ort",
                [part] + ([SUMS] if k == len(parts) - 1 else []), 240,
                ORT_INSTALL_S if k == len(parts) - 1 else ORT_STAGE_S)
           for k, part in enumerate(parts)]
    finish = Call("finish", f"{named}bash scripts/device/on_device.sh finish", [BENCH_MODELS],
                  CALL_LIMIT_S, 0.0, back, benchmarks=True)  # command_s: by time_plan
    return [train, *ort, finish]


def train_seconds(init_from: bool = True, root: Path = ROOT, real: bool = True,
                  scales: tuple[int, ...] = SCALES) -> int:
    """The longest training (a multiple of 10 s) whose train-and-finish sequence leaves
    MARGIN_S of the device budget and keeps the finish call 30 s within its timeout."""
    seq = calls(init_from, root, bench=False, train_s=0, real=real, scales=scales)
    tree = tree_bytes(root)
    carried = {c: carried_bytes(c, root, real, init_from, scales)[0]
               for call in seq for c in call.carry}
    for train_s in range(DEVICE_BUDGET_S, 0, -10):
        seq[0].train_s = train_s
        rows = time_plan(seq, tree, carried)
        if (max(r["end_s"] for r in rows) + MARGIN_S <= DEVICE_BUDGET_S
                and all(r.get("command_s", 0) <= r.get("timeout_s", 0) - 30 for r in rows
                        if "timeout_s" in r)):
            return train_s
    raise SystemExit("plan.py: no training time fits the device budget")


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_bytes(root: Path = ROOT, without: tuple[str, ...] = ("models/*", "docs/*.png")) -> int:
    """Tracked and untracked-not-ignored files present on disk, plus shared/, minus the paths
    matching a `without` pattern (what models_out.sh takes out)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout
    names = {n for n in out.decode().split("\0") if n}
    if (root / "shared").is_dir():
        names |= {p.relative_to(root).as_posix() for p in (root / "shared").rglob("*")}
    return sum(os.path.getsize(root / n) for n in names
               if not any(fnmatch.fnmatch(n, w) for w in without) and (root / n).is_file())


def carried_bytes(path: str, root: Path = ROOT, real: bool = True, init_from: bool = True,
                  scales: tuple[int, ...] = SCALES) -> tuple[int, str]:
    """(bytes, 'real' or 'cap'): the file's size if it exists (and real), else its cap. The
    pack's cap leaves room for the weights when they travel too."""
    if real and (root / path).exists():
        return size_of(root / path), "real"
    if path == INIT:
        return int(init_mib(scales) * MIB), "cap"
    cap_key = next((k for k in CAPS_MIB if path == k or path.startswith(k + "/")), None)
    if cap_key is None:
        raise KeyError(f"{path}: not a path prepare.sh makes")
    cap = CAPS_MIB[cap_key] - (init_mib(scales) if cap_key == PACK and init_from else 0.0)
    return int(cap * MIB), "cap"


def transfer_s(nbytes: float) -> float:
    return TRANSFER_S[0] + TRANSFER_S[1] * nbytes / MIB


def time_plan(plan: list[Call], tree: int, carried: dict[str, int]) -> list[dict]:
    """Timeline of the sequence: training runs detached from the train call to its end, the
    ort calls happen meanwhile, finish waits for it, collects, then benchmarks."""
    rows, t = [{"step": "machine start", "start_s": 0, "end_s": START_S}], START_S
    train_end = None
    for k, call in enumerate(plan):
        t0 = t + (GAP_S if k else 0)
        up = transfer_s(tree + sum(carried[c] for c in call.carry))
        if call.name == "train":
            train_s = call.train_s
            train_end = t0 + up + 10 + train_s + TRAIN_END_S
        if call.name == "finish":
            call.command_s = (max(0.0, train_end - (t0 + up)) + COLLECT_S
                              + (BENCH_S if call.benchmarks else 0)
                              + (JUDGE_S if call.judges else 0))
        back = transfer_s(sum(call.back.values()) * MIB) if call.back else 0.0
        t = t0 + up + call.command_s + back
        rows.append({"step": call.name, "start_s": round(t0), "end_s": round(t),
                     "command_s": round(call.command_s), "transfer_s": round(up + back),
                     "timeout_s": call.timeout_s})
    rows.append({"step": "training (detached)", "start_s": round(train_end - train_s - TRAIN_END_S),
                 "end_s": round(train_end)})
    return rows


def check(init_from: bool = True, root: Path = ROOT, real: bool = True,
          bench: bool = False, scales: tuple[int, ...] = SCALES) -> list[str]:
    """Every limit the sequence must fit; the list of failures (empty: all fit). Prints a table."""
    plan = calls(init_from, root, bench, real=real, scales=scales)
    tree = tree_bytes(root)
    failures: list[str] = []
    carried: dict[str, int] = {}
    print(f"working tree without models/ and docs/*.png: {tree / MIB:.2f} MiB")
    for call in plan:
        sizes = {c: carried_bytes(c, root, real, init_from, scales) for c in call.carry}
        carried.update({c: b for c, (b, _) in sizes.items()})
        total = tree + sum(b for b, _ in sizes.values())
        parts = ", ".join(f"{c} {b / MIB:.2f} MiB ({kind})" for c, (b, kind) in sizes.items())
        print(f"{call.name}: {total / MIB:.2f} MiB travels: tree + {parts or 'nothing'}")
        if total > TRAVEL_LIMIT:
            failures.append(f"{call.name}: {total / MIB:.2f} MiB travels, over 64 MiB")
        if len(call.command) > 2000 or len(call.carry) > 8 or call.timeout_s > CALL_LIMIT_S:
            failures.append(f"{call.name}: command, carry or timeout over the tool's limits")
        if len(call.back) > RETURN_FILES or sum(call.back.values()) * MIB > RETURN_TOTAL:
            failures.append(f"{call.name}: more than {RETURN_FILES} files or 64 MiB back")
        failures += [f"{call.name}: {f} may exceed 16 MiB" for f, mib in call.back.items()
                     if mib * MIB > RETURN_FILE_LIMIT]
    rows = time_plan(plan, tree, carried)
    for r in rows:
        print(f"  {r['step']:<20} {r['start_s']:>4} s -> {r['end_s']:>4} s"
              + (f"  (command {r['command_s']} s, transfers {r['transfer_s']} s, "
                 f"timeout_s {r['timeout_s']})" if "timeout_s" in r else ""))
    end = max(r["end_s"] for r in rows)
    print(f"total {end} s of {DEVICE_BUDGET_S} s device time; margin {DEVICE_BUDGET_S - end} s")
    if end + MARGIN_S > DEVICE_BUDGET_S:
        failures.append(f"time plan: {end} s leaves under {MARGIN_S} s of {DEVICE_BUDGET_S} s")
    failures += [f"{r['step']}: its command ({r['command_s']} s) may outrun timeout_s"
                 for r in rows if r.get("command_s", 0) > r.get("timeout_s", 1e9) - 30]
    if GAP_S >= WARM_S:
        failures.append(f"gaps of {GAP_S} s between calls lose the machine ({WARM_S} s warm)")
    return failures


def pack_budget_mib(init_from: bool = True, root: Path = ROOT, margin_mib: float = 1.0,
                    scales: tuple[int, ...] = SCALES) -> float:
    """What the train call leaves for the pack: 64 MiB minus the tree and the other carries."""
    train = calls(init_from, root, train_s=0, scales=scales)[0]  # its carry; no time plan needed
    others = sum(carried_bytes(c, root, scales=scales)[0] for c in train.carry if c != PACK)
    return round((TRAVEL_LIMIT - tree_bytes(root) - others) / MIB - margin_mib, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["check", "calls", "pack-budget", "scales"])
    p.add_argument("--scales", type=int, nargs="+", choices=[4, 8, 16],
                   default=[int(s) for s in os.environ.get("SCALES", "").split()] or SCALES,
                   help="the scales the session trains (default: $SCALES, else "
                        f"{' '.join(map(str, SCALES))}: those short of their targets)")
    p.add_argument("--init-from", action=argparse.BooleanOptionalAction, default=True,
                   help="the runs start from the shipped weights (INIT_FROM=1, the default); "
                        "--no-init-from: from scratch (INIT_FROM=0 prepare.sh)")
    p.add_argument("--caps", action="store_true",
                   help="check with the caps, not the files in .device/ (as CI does)")
    p.add_argument("--bench", action="store_true",
                   help="also check onnxruntime-gpu and time the service on CUDA (the ort "
                        "calls, benchmarks in finish); training then gets TRAIN_S, not "
                        "every second the plan leaves")
    a = p.parse_args()
    scales = tuple(a.scales)
    if a.what == "scales":
        print(*scales)
        return
    if a.what == "pack-budget":
        print(pack_budget_mib(a.init_from, scales=scales))
        return
    stale = stale_init(scales) if a.init_from and not a.caps else []
    if a.what == "calls":
        if stale:
            sys.exit("\n".join(stale))
        for call in calls(a.init_from, bench=a.bench, scales=scales):
            print(json.dumps(call.tool_args()))
        return
    failures = check(a.init_from, real=not a.caps, bench=a.bench, scales=scales) + stale
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
