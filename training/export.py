"""Export to ONNX (icap, encoder, decoder) plus manifest.json, checked against PyTorch.

Three graphs rather than one, so that n samples cost one encoder pass and one batched decoder
call. Each export is run in ONNX Runtime on a random batch and compared with eager PyTorch; a max
abs error above `tolerance` (on the [-1, 1] scale) aborts the export.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from facesr_core.degradation import lr_size
from facesr_core.manifest import PRINCIPAL_BASIS, Manifest, ModelFile, sha256_of, write_manifest
from training.models import StochasticSR

OPSET = 17
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


class _Decoder(nn.Module):
    def __init__(self, model: StochasticSR):
        super().__init__()
        self.decoder = model.sr.decoder

    def forward(self, features: Tensor, z: Tensor, x: Tensor | None = None) -> Tensor:
        return self.decoder(features, z, x)


def _graphs(model: StochasticSR, hr: int) -> dict[str, tuple[nn.Module, dict, list[str]]]:
    """name -> (module, example inputs by name, output names)."""
    cfg = model.cfg
    x = torch.rand(2, 3, hr, hr) * 2 - 1
    feats = model.sr.encoder(x)
    side = hr // 16
    z = torch.rand(2, cfg.latent_channels, side, side) * 2 - 1
    dec_inputs = {"features": feats, "z": z}
    if cfg.global_residual:
        dec_inputs["x"] = x
    return {
        "icap": (model.icap, {"x": x}, ["mu", "logvar"]),
        "encoder": (model.sr.encoder, {"x": x}, ["features"]),
        "decoder": (_Decoder(model).eval(), dec_inputs, ["y"]),
    }


def _export_one(module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], path: Path,
                tolerance: float) -> ModelFile:
    import onnxruntime as ort  # imported here: only the export needs it on the training side

    names = list(inputs)
    axes = {n: {0: "batch"} for n in [*names, *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=names,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    module.eval()  # the exporter restores the wrapper's own mode, recursively
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(outputs, {n: t.numpy() for n, t in inputs.items()})
    for name, want, have in zip(outputs, expected, got, strict=True):
        err = float(np.max(np.abs(want.numpy() - have)))
        if not err <= tolerance:
            raise ExportError(f"{path.name}: ONNX Runtime differs from PyTorch on {name!r} by "
                              f"{err:.2e} (> {tolerance:.0e}); refusing to write this model")
    shape = lambda t: ["batch", *t.shape[1:]]  # noqa: E731
    return ModelFile(path=path.name, sha256=sha256_of(path),
                     inputs={n: shape(t) for n, t in inputs.items()},
                     outputs={n: shape(t) for n, t in zip(outputs, expected, strict=True)})


def save_weights(model: StochasticSR, out_dir: Path) -> dict[str, ModelFile]:
    """phase1.safetensors (theta and phi) and phase2.safetensors (omega), for fine-tuning."""
    parts = {
        "phase1": {**{f"sr.{k}": v for k, v in model.sr.state_dict().items()},
                   **{f"ren.{k}": v for k, v in model.ren.state_dict().items()}},
        "phase2": {f"icap.{k}": v for k, v in model.icap.state_dict().items()},
    }
    files = {}
    for name, tensors in parts.items():
        path = out_dir / f"{name}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
                  metadata={"config": json.dumps(model.cfg.to_dict())})
        files[name] = ModelFile(path=path.name, sha256=sha256_of(path))
    return files


def export_model(model: StochasticSR, out_dir: Path | str, *, scale: int, preset: str,
                 name: str | None = None, version: str | None = None,
                 training: dict | None = None, metrics: dict | None = None,
                 weights: bool = True, tolerance: float = TOLERANCE,
                 sample_temperature: float = 1.0) -> Manifest:
    """Write the three ONNX graphs (+ weights) and manifest.json into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    hr = 128
    with torch.no_grad():
        files = {g: _export_one(m, ins, outs, out_dir / f"{g}.onnx", tolerance)
                 for g, (m, ins, outs) in _graphs(model, hr).items()}
    cfg = model.cfg
    manifest = Manifest(
        name=name or f"x{scale}",
        version=version or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        scale=scale, preset=preset, hr_size=hr, lr_size=lr_size(scale, hr),
        latent_shape=(cfg.latent_channels, hr // 16, hr // 16),
        global_residual=cfg.global_residual, opset=OPSET, files=files,
        weights=save_weights(model, out_dir) if weights else {},
        training={"model_config": cfg.to_dict(), **(training or {})},
        metrics=metrics or {},
        sample_temperature=sample_temperature,
    )
    for stale in out_dir.glob("*.int8.onnx"):  # quantized from graphs that are now replaced
        stale.unlink()
    (out_dir / PRINCIPAL_BASIS).unlink(missing_ok=True)  # fitted to the replaced model
    write_manifest(out_dir, manifest)
    return manifest
