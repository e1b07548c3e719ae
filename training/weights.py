"""Loading a model back: from a training run or an exported model folder.

A run folder holds `checkpoint.pt` (weights + optimiser state, to resume) and, once a run ends,
`model.safetensors` (weights only, ~9 MiB at paper size: what a GPU run brings back).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from facesr_core.manifest import MANIFEST_NAME, load_manifest
from training.config import ModelConfig
from training.models import StochasticSR

CHECKPOINT = "checkpoint.pt"
MODEL_WEIGHTS = "model.safetensors"


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary pickle


def save_model_weights(model: StochasticSR, path: Path, scale: int,
                       dtype: torch.dtype | None = None) -> None:
    """The weights and BatchNorm statistics; `dtype` casts the floating-point ones (bf16 halves
    the file; loading casts back to the model's dtype)."""
    tensors = {k: _cast(v.detach(), dtype).contiguous().cpu()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(model.cfg.to_dict()),
                                            "scale": str(scale)})


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _from_safetensors(files: list[Path], config: dict) -> StochasticSR:
    model = StochasticSR(ModelConfig(**config))
    state = {}
    for f in files:
        state.update(load_file(f))
    model.load_state_dict(state)
    return model.eval()


def load_model(path: Path) -> tuple[StochasticSR, int]:
    """(model in eval mode, its scale) from a run folder or a models/<name> folder."""
    path = Path(path)
    if (path / CHECKPOINT).exists():
        ckpt = load_checkpoint(path / CHECKPOINT)
        model = StochasticSR(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model.eval(), int(ckpt["config"]["scale"])
    if (path / MODEL_WEIGHTS).exists():
        with safe_open(str(path / MODEL_WEIGHTS), "pt") as fh:
            meta = fh.metadata()
        model = _from_safetensors([path / MODEL_WEIGHTS], json.loads(meta["config"]))
        return model, int(meta["scale"])
    if (path / MANIFEST_NAME).exists():
        return _from_manifest(path)
    raise SystemExit(f"{path}: no {CHECKPOINT}, {MODEL_WEIGHTS} or {MANIFEST_NAME}")


def _from_manifest(path: Path) -> tuple[StochasticSR, int]:
    """The weights an exported model folder lists in its manifest (sha256 checked)."""
    manifest = load_manifest(path, verify=False)
    if not manifest.weights:
        raise SystemExit(f"{path}: its {MANIFEST_NAME} lists no weights (exported without them); "
                         "load the training run folder instead")
    manifest.verify(path, precisions=(), weights=True)
    files = [path / entry.path for entry in manifest.weights.values()]
    return _from_safetensors(files, manifest.training["model_config"]), manifest.scale


def run_summary(path: Path) -> dict:
    summary = Path(path) / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}


def started_from(path: Path) -> dict:
    """What a run that starts from `path`'s weights records of them: the folder and how its
    weights were trained (a manifest's training record, or a run's summary), so that a model
    continued session after session keeps its whole history in its manifest."""
    path = Path(path)
    if (path / MANIFEST_NAME).exists():
        record = load_manifest(path, verify=False).training
    else:
        record = run_summary(path)
    return {"path": str(path), "training": record}

