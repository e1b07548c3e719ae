"""schemathesis hooks: let some generated multipart bodies carry real images.

The OpenAPI schema can only say that `image` is binary, so schemathesis alone sends random
bytes, and nearly every case stops at decoding (415/422). With these hooks, hypothesis also
picks real LR faces (8, 16 and 32 px, plus a 20 px one that needs ?scale) and a real 128 px
reference, so the fuzzed parameters (n, seed, temperature, steps, format, duration_ms, scale)
reach the models and the encoders too. For /photo it also picks a small group photo (two faces
from scikit-image's astronaut composited by bench/scene.py), so faces are found.

    SCHEMATHESIS_HOOKS=bench.schemathesis_hooks PYTHONPATH=. schemathesis run URL/openapi.json
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth, face-like blobs
    img = Image.fromarray(base).resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _group_photo() -> bytes:
    from skimage import data

    from bench.scene import compose
    from facesr_core.degradation import to_hr

    face = np.asarray(to_hr(Image.fromarray(data.astronaut()[25:205, 150:330])))
    scene = compose([face, face[:, ::-1].copy()], [14.0, 22.0], factor=2, seed=1, columns=2)
    buf = io.BytesIO()
    Image.fromarray(scene.photo).save(buf, "PNG")
    return buf.getvalue()


IMAGES = {side: _png(side, side) for side in (8, 16, 20, 32)}
REFERENCE = _png(128, 128)
PHOTO = _group_photo()


@schemathesis.hook
def flatmap_body(context, body):
    if not isinstance(body, dict) or "image" not in body:
        return st.just(body)
    photo = context.operation is not None and context.operation.path == "/photo"
    image = st.sampled_from([None, "photo", 16] if photo else [None, *IMAGES])
    reference = st.sampled_from([None, "valid"]) if "reference" in body else st.just(None)

    def build(choice: tuple) -> dict:
        side, ref = choice
        out = dict(body)
        if side is not None:
            out["image"] = PHOTO if side == "photo" else IMAGES[side]
        if ref is not None:
            out["reference"] = REFERENCE
        return out

    return st.tuples(image, reference).map(build)
