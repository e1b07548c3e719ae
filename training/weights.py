"""Loading a model back: from a training run (checkpoint.pt) or an exported model folder."""

from __future__ import annotations

import json
from pathlib import Path

from training.config import ModelConfig
from training.models import StochasticSR


def load_model(path: Path) -> tuple[StochasticSR, int]:
    """(model in eval mode, its scale) from a run folder or a models/<name> folder."""
    path = Path(path)
    if (path / "checkpoint.pt").exists():
        from training.train import load_checkpoint

        ckpt = load_checkpoint(path / "checkpoint.pt")
        model = StochasticSR(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model.eval(), int(ckpt["config"]["scale"])
    if (path / "manifest.json").exists():
        from safetensors.torch import load_file

        manifest = json.loads((path / "manifest.json").read_text())
        model = StochasticSR(ModelConfig(**manifest["training"]["model_config"]))
        state = {**load_file(path / "phase1.safetensors"), **load_file(path / "phase2.safetensors")}
        model.load_state_dict(state)
        return model.eval(), int(manifest["scale"])
    raise SystemExit(f"{path}: neither a training run (checkpoint.pt) nor a model (manifest.json)")


def run_summary(path: Path) -> dict:
    summary = Path(path) / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}
