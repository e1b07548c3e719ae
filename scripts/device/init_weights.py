"""The shipped weights a GPU session starts from, halved in size so that more faces travel.

For each scale, `models/x<s>`'s networks are written as one `model.safetensors` in bf16 (the
run-folder format `training.weights.load_model` reads; `load_state_dict` casts back to fp32),
with its model config beside it as `config.json` so that `train_all.sh` can keep the model's
deconvolution setting. bf16 keeps 8 bits of mantissa: a relative rounding of at most 2^-9 per
weight, which the first optimiser steps of the continued training dwarf (measured by the test:
the output moves by a fraction of a grey level). At paper size that is 4.7 MiB per scale instead
of 9.4, so the train call's pack keeps ~14 MiB more faces.

    python scripts/device/init_weights.py --models models --out .device/init --scales 8 4 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from plan import INIT_SOURCE, shipped_weights  # scripts/device/, this script's folder

from facesr_core.manifest import MANIFEST_NAME
from training.weights import MODEL_WEIGHTS, load_model, save_model_weights


def write_init(model_dir: Path, out: Path) -> Path:
    """models/<name> -> out/model.safetensors (bf16) + out/config.json, and out/source.json:
    the sha256 of the weights copied, as their manifest lists them (plan.py refuses a copy of
    other weights than those committed; a run folder has no manifest and gets none). Returns
    the weights."""
    model, scale = load_model(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model_weights(model, out / MODEL_WEIGHTS, scale=scale, dtype=torch.bfloat16)
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    if (model_dir / MANIFEST_NAME).is_file():
        source = shipped_weights((model_dir / MANIFEST_NAME).read_text())
        (out / INIT_SOURCE).write_text(json.dumps(source, indent=2))
    return out / MODEL_WEIGHTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--out", type=Path, default=Path(".device/init"))
    p.add_argument("--scales", type=int, nargs="+", default=[8, 4, 16])
    a = p.parse_args()
    for s in a.scales:
        path = write_init(a.models / f"x{s}", a.out / f"x{s}")
        print(f"{path}: {path.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
