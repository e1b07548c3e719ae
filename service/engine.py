"""ONNX Runtime sessions built from manifests: providers, fallback detection, buckets, warm-up.

Batch buckets are 1, 2, 4, 8, then multiples of 8, and the largest size the settings allow.

On a GPU (FACESR_PAD_BATCHES=auto with CUDA or TensorRT in use) every call is padded with zero
rows up to its bucket, so the bucket sizes are the only shapes ever run, and warm-up runs every
bucket of every graph before /health/ready says 200: cuDNN and TensorRT tune per input shape.

On the CPU, calls run at their exact size, split into chunks of at most FACESR_CPU_CHUNK rows,
and warm-up runs each graph once at batch 1. The CPU provider does no per-shape tuning (measured
on the paper-size decoder: the first call at an unseen batch size is as fast as the next ones),
and from batch 1 on it runs at the same speed per image, so bigger calls only cost memory:
padding n = 10 samples (11 decodes with the mean) to 16 would cost about 45% more time, and one
decoder call of 65 holds gigabytes. The sessions' CPU memory arena is off for the same reason
(BENCHMARKS.md, "Memory and start-up"): ONNX Runtime's arena keeps the peak of every session
for the life of the process, while plain allocations go back to the system after each call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from facesr_core.degradation import HR_SIZE, bicubic_upsample, from_model_range, to_model_range
from facesr_core.manifest import (
    INT8_MAX_LOSS_DB,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    load_manifest,
)
from service.sampling import Draws
from service.settings import GPU_PROVIDERS, Settings

log = logging.getLogger("facesr.engine")
CPU = "CPUExecutionProvider"
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                         "onnxruntime-openvino", "onnxruntime-qnn")
DECODER_INPUTS = ("features", "z", "x")


class EngineError(RuntimeError):
    """The models cannot be served as configured: the provider settings cannot be met, so the
    process refuses to start (exit code 3)."""


class ModelError(EngineError):
    """A model directory or file is missing, corrupt or inconsistent: the service stays up but
    not ready (an orchestrator keeps it out of rotation); the log and /v1/models say why."""


def installed_runtimes() -> list[str]:
    """'name==version' of every ONNX Runtime distribution installed (more than one is a bug)."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def warn_if_several_runtimes(found: list[str]) -> bool:
    if len(found) > 1:
        log.warning("several ONNX Runtime packages are installed (%s): they share the "
                    "`onnxruntime` module and the last one installed wins, which usually leaves "
                    "only the CPU provider. Uninstall all of them and install exactly one.",
                    ", ".join(found))
        return True
    return False


def requested_providers(settings: Settings, available: list[str]) -> list[str]:
    """Providers to ask ONNX Runtime for, best first, CPU always last as the fallback."""
    names = settings.provider_names()
    if names is None:  # auto: TensorRT (if enabled), CUDA, CPU, whichever this build has
        names = [p for p in GPU_PROVIDERS
                 if p != "TensorrtExecutionProvider" or settings.enable_tensorrt]
        names = [p for p in names if p in available]
    else:
        missing = [p for p in names if p not in available]
        if missing:
            msg = (f"providers {missing} are not in this onnxruntime build "
                   f"(available: {available})")
            if settings.require_gpu:
                raise EngineError(msg)
            log.warning("%s; skipping them", msg)
        names = [p for p in names if p in available]
    if settings.require_gpu and not any(p in GPU_PROVIDERS for p in names):
        raise EngineError(f"FACESR_REQUIRE_GPU is set but no GPU provider can be requested "
                          f"(FACESR_PROVIDERS={settings.providers!r}, available: {available})")
    return [*[p for p in names if p != CPU], CPU]


def batch_buckets(max_size: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... (multiples of 8) below max_size, then max_size itself."""
    base = [1, 2, 4, *range(8, max_size, 8)]
    return sorted({b for b in base if b < max_size} | {max_size})


def bucket_for(n: int, buckets: list[int]) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} is larger than the largest bucket {buckets[-1]}")


def pad_rows(arr: np.ndarray, size: int) -> np.ndarray:
    """arr padded with zero rows (or one row repeated, for a single row) to `size` rows."""
    if len(arr) == size:
        return np.ascontiguousarray(arr)
    if len(arr) == 1:
        return np.ascontiguousarray(np.repeat(arr, size, axis=0))
    pad = np.zeros((size - len(arr), *arr.shape[1:]), dtype=arr.dtype)
    return np.concatenate([arr, pad])


def model_input(lr: Any) -> np.ndarray:
    """LR Pillow image to the network input x (3,128,128): the shared bicubic upsample."""
    return to_model_range(bicubic_upsample(lr, HR_SIZE))


def discover(model_dir: Path) -> list[Path]:
    """The model directories under FACESR_MODEL_DIR: itself, or every subfolder, each of which
    must hold a manifest (a folder without one is a broken model, never skipped silently)."""
    if (model_dir / MANIFEST_NAME).is_file():
        return [model_dir]
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist (FACESR_MODEL_DIR)")
    dirs = sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ModelError(f"no model in {model_dir}: expected {MANIFEST_NAME} there or in its "
                          "subfolders (e.g. x4/ x8/ x16/)")
    bare = [p.name for p in dirs if not (p / MANIFEST_NAME).is_file()]
    if bare:
        raise ModelError(f"{model_dir}: {', '.join(bare)} has no {MANIFEST_NAME}: restore it "
                          "(facesr-export writes it) or remove the folder")
    return dirs


def check_scales(loaded: dict[int, Runner], expected: tuple[int, ...] | None) -> None:
    """Every scale FACESR_SCALES asks for must be loaded."""
    missing = sorted(set(expected or ()) - set(loaded))
    if missing:
        raise ModelError(f"FACESR_SCALES asks for {', '.join(f'x{s}' for s in missing)} but "
                          f"no model folder has it (loaded: "
                          f"{', '.join(f'x{s}' for s in sorted(loaded)) or 'none'})")


@dataclass
class Runner:
    """The three sessions of one model (one scale), and what was asked of and given by ORT."""

    root: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]
    requested: list[str]
    encoder_buckets: list[int]
    decoder_buckets: list[int]
    pad: bool = True
    max_rows: int | None = None  # rows per graph call (the CPU chunk); None: no limit
    precision: str = "fp32"
    flip_ensemble: bool = False  # superresolve averages with the mirrored face (Settings)
    basis: np.ndarray | None = None  # the principal draws' basis, when the manifest has one
    warm_seconds: float | None = None
    calls: dict[str, set[int]] = field(default_factory=lambda: {"icap": set(), "encoder": set(),
                                                                "decoder": set()})

    @property
    def scale(self) -> int:
        return self.manifest.scale

    @property
    def providers(self) -> list[str]:
        return self.sessions["decoder"].get_providers()

    @property
    def provider(self) -> str:
        """The provider really in use (ORT silently drops ones it cannot load)."""
        return self.providers[0]

    @cached_property
    def decoder_inputs(self) -> frozenset[str]:
        """The decoder graph's input names: features, z, and x with the global residual."""
        return frozenset(i.name for i in self.sessions["decoder"].get_inputs())

    @property
    def default_draws(self) -> str:
        """`principal` when the model ships a basis, else `icap` (the paper's draws)."""
        return "icap" if self.basis is None else "principal"

    def draws(self, kind: str | None = None, temperature: float | None = None) -> Draws:
        """A request's draws: `kind` (default: default_draws) at `temperature` (default: that
        kind's calibrated temperature in the manifest). LookupError: `principal` on a model
        without a basis."""
        kind = kind or self.default_draws
        if kind == "icap":
            t = self.manifest.sample_temperature if temperature is None else temperature
            return Draws("icap", t)
        if self.basis is None:  # load_basis: set exactly when the manifest lists one
            raise LookupError(f"{self.manifest.name} ships no principal basis (its manifest has "
                              "no principal_draws): use draws=icap")
        if temperature is None:
            temperature = self.manifest.principal_draws.temperature
        return Draws("principal", temperature, self.basis)

    def _size(self, n: int, buckets: list[int]) -> int:
        size = bucket_for(n, buckets)  # also refuses batches beyond the largest bucket
        return size if self.pad else n

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls[graph].add(len(next(iter(feeds.values()))))
        return self.sessions[graph].run(None, feeds)

    def _chunks(self, n: int) -> list[slice]:
        step = self.max_rows or n
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ICAP and encoder on x (N,3,128,128): mu, logvar (N,L,8,8), features (N,C,64,64)."""
        parts = [self._encode(x[rows]) for rows in self._chunks(len(x))]
        if len(parts) == 1:
            return parts[0]
        mu, logvar, features = (np.concatenate(p) for p in zip(*parts, strict=True))
        return mu, logvar, features

    def decode(self, features: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The images for all z (M,...); features and x have M rows or one (shared)."""
        return from_model_range(self._decode_float(features, z, x))

    def _decode_float(self, features: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """decode's outputs in the model's range [-1, 1], float (M,3,128,128)."""
        def part(arr: np.ndarray, rows: slice) -> np.ndarray:
            return arr if len(arr) == 1 else arr[rows]

        parts = [self._decode(part(features, rows), z[rows], part(x, rows))
                 for rows in self._chunks(len(z))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(x)
        xb = pad_rows(x, self._size(n, self.encoder_buckets))
        mu, logvar = self._run("icap", {"x": xb})
        (features,) = self._run("encoder", {"x": xb})
        return mu[:n], logvar[:n], features[:n]

    def _decode(self, features: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """One decoder call for all z (M,...); features and x have M rows or one (shared)."""
        m = len(z)
        size = self._size(m, self.decoder_buckets)
        feeds = {"features": pad_rows(features, size), "z": pad_rows(z, size)}
        if "x" in self.decoder_inputs:
            feeds["x"] = pad_rows(x, size)
        (y,) = self._run("decoder", feeds)
        return y[:m]

    def superresolve(self, x: np.ndarray) -> np.ndarray:
        """The ICAP-mean output f(x, mu) for each x (N,3,128,128): uint8 (N,128,128,3). With
        flip_ensemble, averaged (before rounding) with the mirrored face's output mirrored back;
        two calls of N rows, not one of 2N, so the batch buckets stay the ones warmed."""
        y = self._mean_output(x)
        if self.flip_ensemble:
            y = (y + self._mean_output(np.ascontiguousarray(x[..., ::-1]))[..., ::-1]) / 2
        return from_model_range(y)

    def _mean_output(self, x: np.ndarray) -> np.ndarray:
        mu, _, features = self.encode(x)
        return self._decode_float(features, mu, x)

    def warmup_sizes(self) -> tuple[list[int], list[int]]:
        """Batch sizes warm-up runs (encoder, decoder): every bucket when calls are padded to
        them (GPU), else batch 1 (CPU: nothing is tuned per shape)."""
        if self.pad:
            return self.encoder_buckets, self.decoder_buckets
        return [1], [1]

    def warmup(self, stop: Callable[[], bool] = lambda: False) -> float | None:
        """Run each warm-up size of every graph once; returns the seconds it took, or None
        when `stop()` turned true between two calls (shutdown during warm-up)."""
        start = time.perf_counter()
        latent = self.manifest.latent_shape
        encoder_sizes, decoder_sizes = self.warmup_sizes()
        for b in encoder_sizes:
            if stop():
                return None
            self.encode(np.zeros((b, 3, HR_SIZE, HR_SIZE), np.float32))
        x1 = np.zeros((1, 3, HR_SIZE, HR_SIZE), np.float32)
        _, _, feats = self.encode(x1)
        for b in decoder_sizes:
            if stop():
                return None
            self.decode(feats, np.zeros((b, *latent), np.float32), x1)
        self.warm_seconds = time.perf_counter() - start
        return self.warm_seconds

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name, "scale": m.scale, "lr_size": m.lr_size, "version": m.version,
            "preset": m.preset, "latent_shape": list(m.latent_shape),
            "global_residual": m.global_residual, "opset": m.opset,
            "sample_temperature": m.sample_temperature, "flip_ensemble": self.flip_ensemble,
            "default_draws": self.default_draws,
            "principal_draws": m.principal_draws.model_dump() if m.principal_draws else None,
            "provider": self.provider, "providers": self.providers, "precision": self.precision,
            "requested_providers": self.requested,
            "files": {k: {"path": f.path, "sha256": f.sha256}
                      for k, f in {**m.files, **m.weights}.items()},
            "metrics": m.metrics,
            "int8": m.int8.model_dump(include={"files", "method", "calibration", "loss"})
            if m.int8 else None,
            "batch_buckets": {"icap": self.encoder_buckets, "encoder": self.encoder_buckets,
                              "decoder": self.decoder_buckets},
            "padded_to_buckets": self.pad,
            "warmed_batch_sizes": dict(zip(("encoder", "decoder"), self.warmup_sizes(),
                                           strict=True)),
            "max_rows_per_call": self.max_rows,
            "warmup_seconds": self.warm_seconds,
        }


def session_options(settings: Settings) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False  # see the module docstring
    if settings.intra_op_threads:
        so.intra_op_num_threads = settings.intra_op_threads
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "1" if settings.ort_spin_wait else "0")
    return so


def provider_options(name: str, inputs: dict[str, list], max_batch: int,
                     conv_algo_search: str) -> dict[str, Any]:
    """TensorRT gets one optimisation profile spanning every bucket (else it rebuilds per shape);
    CUDA gets FACESR_CUDNN_CONV_ALGO_SEARCH (its own default, exhaustive, benchmarks each
    convolution again whenever its input shape changes: the buckets change it call to call)."""
    if name == "CUDAExecutionProvider":
        return {"cudnn_conv_algo_search": conv_algo_search.upper()}
    if name != "TensorrtExecutionProvider":
        return {}

    def shapes(batch: int) -> str:
        return ",".join(f"{k}:{'x'.join(str(d) for d in [batch, *s[1:]])}"
                        for k, s in inputs.items())

    return {"trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(max_batch),
            "trt_profile_max_shapes": shapes(max_batch)}


def check_graphs(root: Path, manifest: Manifest, sessions: dict[str, ort.InferenceSession]) -> None:
    dec = {i.name for i in sessions["decoder"].get_inputs()}
    if not dec <= set(DECODER_INPUTS) or not {"features", "z"} <= dec:
        raise ModelError(f"{root}: decoder inputs {sorted(dec)}, expected features, z (and x)")
    if ("x" in dec) != manifest.global_residual:
        raise ModelError(f"{root}: manifest global_residual={manifest.global_residual} but the "
                          f"decoder inputs are {sorted(dec)}")
    if manifest.hr_size != HR_SIZE:
        raise ModelError(f"{root}: hr_size {manifest.hr_size}, this service serves {HR_SIZE}")


def serving_precision(manifest: Manifest, wanted: str, provider: str) -> str:
    """fp32 or int8 for one model: FACESR_PRECISION, the provider asked for first, and the int8
    PSNR loss its manifest records (auto: int8 only on the CPU, within INT8_MAX_LOSS_DB)."""
    if wanted == "int8" and manifest.int8 is None:
        raise ModelError(f"{manifest.name}: FACESR_PRECISION=int8 but its manifest lists no int8 "
                         "graphs; add them with `facesr-export --int8-only --out DIR --pack "
                         "PACK.npz`, or set FACESR_PRECISION=auto")
    if wanted != "auto":
        return wanted
    fits = manifest.int8 is not None and manifest.int8.loss_within(INT8_MAX_LOSS_DB)
    return "int8" if fits and provider == CPU else "fp32"


def load_runner(root: Path, settings: Settings, requested: list[str]) -> Runner:
    try:
        manifest = load_manifest(root, verify=False)
        precision = serving_precision(manifest, settings.precision, requested[0])
        manifest.verify(root, (precision,), weights=False)  # serving reads no weights
    except ManifestError as exc:
        raise ModelError(str(exc)) from exc
    enc_buckets = batch_buckets(settings.max_batch)
    dec_buckets = batch_buckets(max(settings.max_samples + 1, settings.max_steps,
                                    settings.max_batch))
    sessions = {}
    for graph in ("icap", "encoder", "decoder"):
        top = dec_buckets[-1] if graph == "decoder" else enc_buckets[-1]
        inputs = manifest.files[graph].inputs
        providers = [(p, provider_options(p, inputs, top, settings.cudnn_conv_algo_search))
                     for p in requested]
        path = manifest.graph_path(root, graph, precision)
        try:
            sessions[graph] = ort.InferenceSession(str(path), session_options(settings),
                                                   providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several pybind11 exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
    check_graphs(root, manifest, sessions)
    return Runner(root, manifest, sessions, requested, enc_buckets, dec_buckets,
                  precision=precision, flip_ensemble=settings.flip_ensemble,
                  basis=load_basis(root, manifest))


def load_basis(root: Path, manifest: Manifest) -> np.ndarray | None:
    """The principal basis its manifest lists (hash already verified), checked against the
    manifest's rank and latent shape; None when it lists none."""
    entry = manifest.principal_draws
    if entry is None:
        return None
    path = root / entry.file.path
    try:
        basis = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable .npy basis: {exc}") from exc
    want = (entry.rank, *manifest.latent_shape)
    if basis.shape != want or basis.dtype != np.float32:
        raise ModelError(f"{path}: basis is {basis.dtype} {basis.shape}, the manifest says "
                         f"float32 {want}")
    return basis


def check_provider(runner: Runner, settings: Settings) -> None:
    """Log what runs where; refuse when the GPU is required but ORT fell back to the CPU."""
    asked, got = runner.requested[0], runner.provider
    if settings.require_gpu and got not in GPU_PROVIDERS:
        raise EngineError(
            f"{runner.manifest.name}: FACESR_REQUIRE_GPU is set but ONNX Runtime runs it on {got} "
            f"(asked for {runner.requested}); the CUDA/cuDNN libraries this onnxruntime-gpu "
            "needs are probably missing (see the ONNX Runtime log above)")
    if got != asked:
        log.warning("%s: asked for %s but ONNX Runtime runs it on %s (fallback)",
                    runner.manifest.name, asked, got)
    log.info("model %s scale x%d version %s: provider %s (session providers %s), %s graphs",
             runner.manifest.name, runner.scale, runner.manifest.version, got, runner.providers,
             runner.precision)


def load_models(settings: Settings) -> dict[int, Runner]:
    """Every model under FACESR_MODEL_DIR, by scale. Raises ModelError for a bad model, and
    EngineError when the provider settings cannot be met."""
    warn_if_several_runtimes(installed_runtimes())
    available = ort.get_available_providers()
    requested = requested_providers(settings, available)
    log.info("onnxruntime %s, available providers %s, requesting %s", ort.__version__,
             available, requested)
    runners: dict[int, Runner] = {}
    for root in discover(Path(settings.model_dir)):
        runner = load_runner(root, settings, requested)
        runner.pad = (settings.pad_batches == "always" or (
            settings.pad_batches == "auto" and runner.provider in GPU_PROVIDERS))
        runner.max_rows = None if runner.pad else settings.cpu_chunk  # CPU: unpadded chunks
        if runner.scale in runners:
            raise ModelError(f"two models for scale {runner.scale}: "
                              f"{runners[runner.scale].root} and {root}")
        check_provider(runner, settings)
        runners[runner.scale] = runner
    check_scales(runners, settings.expected_scales())
    return runners
