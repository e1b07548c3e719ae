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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACESR_", extra="ignore")

    model_dir: Path = Path("models")
    providers: str = "auto"
    require_gpu: bool = False
    enable_tensorrt: bool = False
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    intra_op_threads: int = Field(0, ge=0)
    run_concurrency: int = Field(1, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(16_000_000, ge=64)
    max_samples: int = Field(64, ge=1, le=1024)
    max_steps: int = Field(64, ge=2, le=1024)
    max_batch: int = Field(16, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0)
    max_in_flight: int = Field(32, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    retry_after_s: int = Field(1, ge=0)
    warmup: bool = True
    pad_batches: Literal["auto", "always", "never"] = "auto"
    api_key: SecretStr = SecretStr("")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

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
