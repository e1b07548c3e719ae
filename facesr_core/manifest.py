"""manifest.json: the contract between training (which writes it) and serving (which reads only it).

A model directory holds three ONNX graphs and this manifest:
- icap.onnx     x (N,3,128,128) -> mu, logvar (N,64,8,8), both in [-1, 1]
- encoder.onnx  x -> features (N,C,64,64)
- decoder.onnx  features, z (and x when the model has a global residual) -> y (N,3,128,128)
x is the bicubic-upsampled LR face and y the SR face, both float32 in [-1, 1].

Optionally (`principal_draws`) a basis for the samples: float32 (rank, *latent_shape), the rows
b_i along which `/samples` and `/traverse` draw z = mu + T * sum_i eps_i b_i by default (ours:
facesr_core/latent.py); a manifest without it draws from the ICAP's Gaussian (the paper).

Optionally (`int8`) the same three graphs statically quantized (icap.int8.onnx, ...: int8
weights, uint8 activations, calibrated at export), with the quality they lose against the fp32
graphs on each test split. A manifest without `int8` is as valid as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
GRAPHS = ("icap", "encoder", "decoder")
PRECISIONS = ("fp32", "int8")
PRINCIPAL_BASIS = "principal_basis.npy"  # the file training/principal.py installs
# FACESR_PRECISION=auto serves int8 only within this PSNR loss on every test split; the export
# keeps in fp32 the graphs that would push the int8 set past it (training/quantize.py)
INT8_MAX_LOSS_DB = 0.02

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


class QuantizationLoss(BaseModel):
    """PSNR (RGB uint8, the ICAP-mean output) of the fp32 and int8 graphs on one test split."""

    count: int
    psnr_fp32: float
    psnr_int8: float
    loss_db: float  # psnr_fp32 - psnr_int8: positive when int8 is worse


class Int8Graphs(BaseModel):
    """The three graphs statically quantized at export, and what that cost in quality."""

    files: dict[str, ModelFile]
    method: str
    calibration: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, QuantizationLoss] = Field(default_factory=dict)  # by test split

    @field_validator("files")
    @classmethod
    def _has_graphs(cls, files: dict[str, ModelFile]) -> dict[str, ModelFile]:
        return _all_graphs(files)

    def loss_within(self, max_db: float) -> bool:
        """True when a loss was measured on at least one test split and none exceeds max_db."""
        return bool(self.loss) and all(v.loss_db <= max_db for v in self.loss.values())


def _all_graphs(files: dict[str, ModelFile]) -> dict[str, ModelFile]:
    missing = [g for g in GRAPHS if g not in files]
    if missing:
        raise ValueError(f"manifest lacks graphs {missing}")
    return files


class PrincipalDraws(BaseModel):
    """The basis of the `principal` draws and their calibrated default temperature."""

    file: ModelFile  # .npy, float32 (rank, *latent_shape): sqrt(lambda_i) v_i
    rank: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    # how it was fitted and chosen: faces, explained variance, best-of gains per rank and T
    calibration: dict[str, Any] = Field(default_factory=dict)


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
    # When present, the default draws of /samples and /traverse (with its own temperature);
    # `sample_temperature` stays the temperature of the paper's draws from the ICAP's Gaussian.
    principal_draws: PrincipalDraws | None = None
    int8: Int8Graphs | None = None

    @field_validator("files")
    @classmethod
    def _has_graphs(cls, files: dict[str, ModelFile]) -> dict[str, ModelFile]:
        return _all_graphs(files)

    def graph_files(self, precision: str = "fp32") -> dict[str, ModelFile]:
        """The three graphs of one precision (fp32 or int8); ManifestError if it has none."""
        if precision == "fp32":
            return self.files
        if precision == "int8" and self.int8 is not None:
            return self.int8.files
        raise ManifestError(f"{self.name}: no {precision} graphs in {MANIFEST_NAME}")

    def graph_path(self, root: Path, graph: str, precision: str = "fp32") -> Path:
        return root / self.graph_files(precision)[graph].path

    def int8_kept_in_fp32(self) -> list[str]:
        """The graphs that the int8 set serves in fp32 (its entry names the fp32 file)."""
        if self.int8 is None:
            return []
        return [g for g, f in self.int8.files.items() if f.path == self.files[g].path]

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this model has graphs for."""
        return PRECISIONS if self.int8 is not None else ("fp32",)

    def verify(self, root: Path, precisions: tuple[str, ...] | None = None,
               weights: bool = True) -> None:
        """Raise ManifestError unless the graphs of `precisions` (default: all the manifest
        lists), the principal basis (if any) and, when `weights`, the weights exist with the
        recorded sha256."""
        graphs = [(g if p == "fp32" else f"{p} {g}", entry)
                  for p in (self.precisions if precisions is None else precisions)
                  for g, entry in self.graph_files(p).items()]
        basis = [("principal basis", self.principal_draws.file)] if self.principal_draws else []
        for kind, entry in [*graphs, *basis, *(self.weights.items() if weights else ())]:
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
        manifest.verify(root, weights=weights)
    return manifest


def validation_summary(exc: ValidationError, root: str = "manifest") -> str:
    """A pydantic ValidationError on one line: 'field.path: message; ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or root}: {err['msg']}"
                     for err in exc.errors())


def write_manifest(model_dir: Path | str, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path
