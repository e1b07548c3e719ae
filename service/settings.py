"""Every setting of the service, read from FACESR_* environment variables (pydantic-settings).

Each field is documented in the README's settings table; an undocumented setting is a bug.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Short provider names accepted in FACESR_PROVIDERS, and the ONNX Runtime names they stand for.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
SOURCE_TREE_MODELS = Path(__file__).resolve().parents[1] / "models"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and small fields


def model_dir_candidates() -> list[Path]:
    """Where the default model directory is looked for, in order: `models` in the current
    folder, then the `models/` beside the `service` package (a clone or an editable install)."""
    return [Path("models").resolve(), SOURCE_TREE_MODELS]


def default_model_dir() -> Path:
    """The first candidate that exists, else the first one (the service then says so)."""
    candidates = model_dir_candidates()
    return next((p for p in candidates if p.is_dir()), candidates[0])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACESR_", extra="ignore")

    model_dir: Path = Field(default_factory=default_model_dir, description=(
        "Model directory: subfolders (x4/ x8/ x16/) each with a manifest.json, one model per "
        "scale; or one folder that holds manifest.json itself. Default: ./models if it exists, "
        "else the models/ folder of the source tree the service runs from"))
    scales: str = Field("", description=(
        "Scales that must be loaded before the service is ready, e.g. 4,8,16; empty: every "
        "subfolder of FACESR_MODEL_DIR (each must hold a manifest.json)"))
    providers: str = Field("auto", description=(
        "ONNX Runtime providers: auto (TensorRT if enabled, then CUDA, then CPU, whichever the "
        "installed onnxruntime has), or a comma list of cpu, cuda, tensorrt"))
    require_gpu: bool = Field(False, description=(
        "Refuse to start unless the models really run on CUDA or TensorRT"))
    enable_tensorrt: bool = Field(False, description="Let `auto` try TensorRT first")
    precision: Literal["auto", "fp32", "int8"] = Field("auto", description=(
        "Graphs to serve: auto = the int8 graphs when the CPU provider is asked for and the "
        "manifest records a PSNR loss of at most 0.02 dB on every test split, else fp32 (always "
        "fp32 on CUDA/TensorRT); fp32; int8 (a model without int8 graphs is then not ready)"))
    host: str = Field("0.0.0.0", description="Bind address (python -m service)")
    port: int = Field(8000, ge=0, le=65535, description="Port (python -m service)")
    workers: int = Field(1, ge=1, description=(
        "uvicorn worker processes (python -m service); >1 sets up PROMETHEUS_MULTIPROC_DIR"))
    intra_op_threads: int = Field(0, ge=0, description=(
        "CPU threads per ONNX Runtime session; 0 = ONNX Runtime's default (all cores)"))
    ort_spin_wait: bool = Field(False, description=(
        "Let ONNX Runtime's intra-op threads spin-wait after each run. Off by default: with three "
        "sessions per request on a few cores, spinning pools steal the cores (measured: 2x slower "
        "on 2 cores, BENCHMARKS.md). Matters on the CPU only"))
    cpu_chunk: int = Field(8, ge=1, le=1024, description=(
        "On the CPU, the most images in one ONNX Runtime call: bigger batches (/samples, "
        "/traverse, micro-batches) run in chunks of this size. It bounds memory; the CPU runs "
        "as fast per image at 8 as at 64 (BENCHMARKS.md). Not used when batches are padded "
        "(CUDA/TensorRT, or FACESR_PAD_BATCHES=always)"))
    run_concurrency: int = Field(1, ge=1, description=(
        "ONNX Runtime calls that may run at once in one worker (size of the inference pool)"))
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description=(
        "Largest uploaded file (image or reference), else 413; the whole body may be twice "
        "this plus 64 KiB"))
    max_pixels: int = Field(16_000_000, ge=64, description=(
        "Largest width x height to decode (checked from the header, so decompression bombs "
        "are refused before decoding), else 413"))
    max_samples: int = Field(64, ge=1, le=1024, description="Largest n of /samples")
    max_steps: int = Field(64, ge=2, le=1024, description="Largest steps of /traverse")
    max_faces: int = Field(64, ge=1, le=1024, description=(
        "Largest max_faces of /photo (faces super-resolved per photo, the best-scoring first)"))
    max_output_pixels: int = Field(40_000_000, ge=64, description=(
        "Largest width x height of the photo /photo returns (the input times upscale squared; "
        "1920x1080 at x4 is 33 MP), else 413"))
    max_batch: int = Field(16, ge=1, le=256, description=(
        "Most /superresolve requests in one micro-batch"))
    max_wait_ms: float = Field(5.0, ge=0, description=(
        "How long a /superresolve request waits for others to join its batch"))
    max_in_flight: int = Field(32, ge=1, description=(
        "Inference requests admitted at once per worker, whatever their cost; beyond that 503 "
        "with Retry-After (work that cannot finish before its deadline is refused too)"))
    request_timeout_s: float = Field(30.0, gt=0, description=(
        "Per-request limit for inference endpoints (upload to response), else 504; SIGTERM "
        "waits at most this + 5 s for in-flight requests (python -m service)"))
    body_timeout_s: float = Field(10.0, gt=0, description=(
        "Time to receive the whole request body, else 408; no inference slot is held "
        "meanwhile"))
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "Time to receive a request's headers on a connection, else it is closed (python -m "
        "service)"))
    keep_alive_s: int = Field(5, ge=1, description=(
        "Idle time after a response before a keep-alive connection is closed (python -m "
        "service)"))
    max_connections: int = Field(256, ge=1, description=(
        "Open connections per worker; beyond that uvicorn answers 503 (python -m service)"))
    retry_after_s: int = Field(1, ge=0, description="Retry-After of 503 answers, in seconds")
    warmup: bool = Field(True, description=(
        "Warm every model up before /health/ready says 200 (on CUDA/TensorRT every batch "
        "bucket, on the CPU batch 1); false: ready at once (development only)"))
    pad_batches: Literal["auto", "always", "never"] = Field("auto", description=(
        "Pad batches to the warmed bucket sizes: auto = on CUDA/TensorRT, not on the CPU"))
    cudnn_conv_algo_search: Literal["heuristic", "exhaustive", "default"] = Field(
        "heuristic", description=(
            "How ONNX Runtime's CUDA provider picks each convolution's cuDNN algorithm: "
            "heuristic (cuDNN's heuristics, at once), exhaustive (ONNX Runtime's default: "
            "benchmarks every algorithm, again whenever a convolution's input shape changes, "
            "which the batch buckets do call to call), default (one fixed algorithm)"))
    flip_ensemble: bool = Field(False, description=(
        "/superresolve and /photo return the mean of the face's output and its mirror image's "
        "output mirrored back (a flip self-ensemble): +0.05 to +0.10 dB on held-out faces "
        "(README, Results), at twice the inference per face. /samples, /traverse and the "
        "uncertainty map are unchanged"))
    api_key: SecretStr = Field(SecretStr(""), description=(
        "If set, every endpoint but /health/*, /metrics and the docs needs "
        "'Authorization: Bearer <key>'"))
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service and uvicorn")

    @field_validator("log_level", "precision", "cudnn_conv_algo_search", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("scales")
    @classmethod
    def _known_scales(cls, value: str) -> str:
        scale_list(value)  # raises ValueError on an unknown scale
        return value

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: an image and a reference of FACESR_MAX_UPLOAD_BYTES each,
        and the form around them."""
        return 2 * self.max_upload_bytes + FORM_OVERHEAD

    def expected_scales(self) -> tuple[int, ...] | None:
        """The scales FACESR_SCALES asks for; None: every model folder present."""
        return scale_list(self.scales)

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        provider_list(value)  # raises ValueError on an unknown name
        return value

    def provider_names(self) -> list[str] | None:
        """The ONNX Runtime provider names asked for, in order; None for `auto`."""
        return provider_list(self.providers)


def provider_list(value: str) -> list[str] | None:
    """'auto' -> None; 'cuda,cpu' -> ['CUDAExecutionProvider', 'CPUExecutionProvider']."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if items == ["auto"]:
        return None
    names = []
    for item in items:
        if item.lower() in PROVIDER_ALIASES:
            names.append(PROVIDER_ALIASES[item.lower()])
        elif item.endswith("ExecutionProvider"):
            names.append(item)
        else:
            raise ValueError(
                f"unknown provider {item!r}: use auto, or a comma list of cpu, cuda, tensorrt "
                "(or full ONNX Runtime provider names)"
            )
    if not names:
        raise ValueError("FACESR_PROVIDERS is empty: use auto, or a comma list of providers")
    return names


def scale_list(value: str) -> tuple[int, ...] | None:
    """'4, 8,16' -> (4, 8, 16); '' -> None."""
    items = [v.strip().lower().removeprefix("x") for v in value.split(",") if v.strip()]
    if not items:
        return None
    if any(item not in ("4", "8", "16") for item in items):
        raise ValueError(f"FACESR_SCALES={value!r}: use a comma list of 4, 8 and 16, or leave "
                         "it empty for every model folder present")
    return tuple(sorted({int(item) for item in items}))
