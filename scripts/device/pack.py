"""Data packs small enough to travel with a device run, original bytes.

The training pack: a seeded random subset of the training faces of a pack made by
`facesr-prepare` (JPEG-encoded HR faces with their splits), plus a few validation faces for the
sample grids, as large as fits `--budget-mib`. The JPEG bytes are copied, not re-encoded, so the
targets are the ones the CPU models were trained on. No test face is in it, and the test split
stays identity-disjoint from every face kept.

The judging pack (`--judge`): every validation and test face of the sources with held-out
faces, and the training faces the principal basis is fitted on, for `on_device.sh`'s judge
step (evaluation and the basis on the GPU after training). Training never reads it.

    python scripts/device/pack.py --pack packs/faces_all.npz --out .device/pack.npz --budget-mib 58
    python scripts/device/pack.py --judge --out .device/judge.npz --budget-mib 20  # held-out faces
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.data import count_by_split

FIELDS = ("name", "source", "split", "identity")
JUDGE_SOURCES = ("celeba", "utkface")  # the sources with held-out faces (training.cli)


def subset(pack: Path, budget_bytes: int, val: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a pack holding `val` validation faces and as many training faces as fit."""
    arrays = load(pack)
    offsets, split = arrays["offsets"], arrays["split"]
    sizes = np.diff(offsets)
    overhead = sum(arrays[k].itemsize for k in FIELDS) + offsets.itemsize  # per face, npz arrays
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(np.flatnonzero(split == "val"))[:val])
    spent = 4096 + sum(int(sizes[i]) + overhead for i in chosen)  # npz headers: a few KiB
    for i in rng.permutation(np.flatnonzero(split == "train")):
        if spent + sizes[i] + overhead > budget_bytes:
            break
        chosen.append(i)
        spent += int(sizes[i]) + overhead
    return take(arrays, chosen, pack, seed)


def load(pack: Path) -> dict[str, np.ndarray]:
    with np.load(pack, allow_pickle=False) as z:
        return {k: z[k] for k in (*FIELDS, "jpeg", "offsets", "meta")}


def take(arrays: dict[str, np.ndarray], chosen, pack: Path, seed: int) -> dict[str, np.ndarray]:
    """The pack arrays of the faces `chosen` (indices), in pack order, original JPEG bytes."""
    chosen = np.sort(np.asarray(chosen, np.int64))
    offsets, split = arrays["offsets"], arrays["split"]
    blobs = [arrays["jpeg"][offsets[i]:offsets[i + 1]] for i in chosen]
    meta = json.loads(str(arrays["meta"]))
    summary = {"count": len(chosen), "quality": meta.get("quality"),
               "by_split": count_by_split(arrays["source"][chosen], split[chosen]),
               "subset_of": {"pack": pack.name, "count": meta.get("count"), "seed": seed}}
    return {"jpeg": np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
            "offsets": np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64),
            **{k: arrays[k][chosen] for k in FIELDS}, "meta": np.array(json.dumps(summary))}


def judge_subset(pack: Path, sources: tuple[str, ...] = JUDGE_SOURCES,
                 train_faces: int = 1200, seed: int = 1) -> dict[str, np.ndarray]:
    """What judging a run on the GPU reads (on_device.sh judge): every val and test face of
    `sources` (evaluation, and the basis's calibration and check), and the training faces that
    training.principal fits the basis on: its seeded sample, which it then draws again whole."""
    from training.principal import basis_training_faces

    arrays = load(pack)
    held_out = np.flatnonzero(np.isin(arrays["split"], ["val", "test"])
                              & np.isin(arrays["source"], sources))
    basis_faces, _ = basis_training_faces(pack, list(sources), train_faces, seed)
    return take(arrays, np.concatenate([held_out, basis_faces]), pack, seed)


def write(pack: Path, out: Path, budget_mib: float, val: int = 4, seed: int = 0,
          judge: bool = False) -> dict:
    budget = int(budget_mib * 2**20)
    arrays = judge_subset(pack) if judge else subset(pack, budget, val, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    size = out.stat().st_size
    if size > budget:
        out.unlink()
        raise SystemExit(f"{out}: {size / 2**20:.2f} MiB is over the budget of {budget_mib} MiB")
    return {**json.loads(str(arrays["meta"])), "path": str(out), "MiB": round(size / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", type=Path, default=Path("packs/faces_all.npz"))
    p.add_argument("--out", type=Path, default=Path(".device/pack.npz"))
    p.add_argument("--budget-mib", type=float, required=True, help="largest file size, MiB")
    p.add_argument("--val", type=int, default=4, help="validation faces (sample grids)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", action="store_true",
                   help="instead: the faces that judging a run on the GPU reads (judge_subset)")
    a = p.parse_args()
    if not a.pack.exists():
        raise SystemExit(f"{a.pack}: no such pack (make it with facesr-prepare)")
    print(json.dumps(write(a.pack, a.out, a.budget_mib, a.val, a.seed, a.judge), indent=2))


if __name__ == "__main__":
    main()
