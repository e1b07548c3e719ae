"""What training and serving must agree on: the degradation and the model manifest.

This package imports no torch, so the slim serving image can use it as is.
"""

from facesr_core.degradation import (
    HR_SIZE,
    SCALES,
    bicubic_upsample,
    degrade,
    from_model_range,
    lr_size,
    to_model_range,
)
from facesr_core.manifest import Manifest, ManifestError, ModelFile, load_manifest

__all__ = [
    "HR_SIZE",
    "SCALES",
    "Manifest",
    "ManifestError",
    "ModelFile",
    "bicubic_upsample",
    "degrade",
    "from_model_range",
    "load_manifest",
    "lr_size",
    "to_model_range",
]
