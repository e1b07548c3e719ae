"""manifest.json: the contract between training (which writes it) and serving (which reads only it).

A model directory holds three ONNX graphs and this manifest:
- icap.onnx     x (N,3,128,128) -> mu, logvar (N,64,8,8), both in [-1, 1]
- encoder.onnx  x -> features (N,C,64,64)
- decoder.onnx  features, z (and x when the model has a global residual) -> y (N,3,128,128)
x is the bicubic-upsampled LR face and y the SR face, both float32 in [-1, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
GRAPHS = ("icap", "encoder", "decoder")

Shape = list[int | str]


class ManifestError(ValueError):
    """A model directory that cannot be served as it is: missing, corrupt or inconsistent."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelFile(BaseModel):
    """One file of the model directory, with its hash and (for graphs) its tensor signature."""

    path: str
    sha256: str
    inputs: dict[str, Shape] = Field(default_factory=dict)
    outputs: dict[str, Shape] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # Files live beside the manifest; a manifest must never point elsewhere on disk.
        if Path(value).name != value or value in ("", ".", ".."):
            raise ValueError(f"file path must be a plain file name, got {value!r}")
        return value


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    scale: int
    preset: str
    hr_size: int = 128
    lr_size: int
    pixel_range: tuple[float, float] = (-1.0, 1.0)
    latent_shape: tuple[int, int, int]
    global_residual: bool
    opset: int
    files: dict[str, ModelFile]
    weights: dict[str, ModelFile] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    # The temperature of /samples and /traverse when a request gives none, calibrated per model
    # on the validation split (`python -m training.diagnostics --calibrate`). Manifests written
    # before it existed get 1.0: the paper's draws from the ICAP's Gaussian.
    sample_temperature: float = Field(1.0, ge=0.0)

    @field_validator("files")
    @classmethod
    def _has_graphs(cls, files: dict[str, ModelFile]) -> dict[str, ModelFile]:
        missing = [g for g in GRAPHS if g not in files]
        if missing:
            raise ValueError(f"manifest lacks graphs {missing}")
        return files

    def graph_path(self, root: Path, graph: str) -> Path:
        return root / self.files[graph].path

    def verify(self, root: Path, weights: bool = True) -> None:
        """Raise ManifestError unless every listed file (the graphs, and the weights when
        `weights`) exists with the recorded sha256."""
        entries = [*self.files.items(), *(self.weights.items() if weights else ())]
        for kind, entry in entries:
            path = root / entry.path
            if not path.is_file():
                raise ManifestError(f"{root.name}: {kind} file {entry.path} is missing")
            actual = sha256_of(path)
            if actual != entry.sha256:
                raise ManifestError(
                    f"{root.name}: {kind} file {entry.path} has sha256 {actual[:12]}…, "
                    f"manifest says {entry.sha256[:12]}… (corrupt or replaced)"
                )


def load_manifest(model_dir: Path | str, verify: bool = True, weights: bool = True) -> Manifest:
    root = Path(model_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{root}: no {MANIFEST_NAME}")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid manifest: {validation_summary(exc)}") from exc
    except ValueError as exc:
        raise ManifestError(f"{path}: invalid manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.format_version}, this code reads {FORMAT_VERSION}"
        )
    if verify:
        manifest.verify(root, weights)
    return manifest


def validation_summary(exc: ValidationError) -> str:
    """A pydantic ValidationError on one line: 'field.path: message; ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}"
                     for err in exc.errors())
