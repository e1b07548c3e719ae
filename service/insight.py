"""What the samples tell beyond the images: the uncertainty map, and identity ranking.

- `?uncertainty=true` (/superresolve, /samples): the map of facesr_core.uncertainty over the n
  samples, as float16 base64 and as a colour-mapped PNG with its scale bar.
- `identity_reference` (/samples): another photo of the same person; every entry gets its
  identity distance to it (facesr_core.identity, the `identity` extra) and the samples are
  ordered by it, nearest first. Without the extra the request is refused with 422.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from facesr_core import identity
from facesr_core.degradation import to_hr
from facesr_core.uncertainty import colour_scale_max, float16_payload, render_png, uncertainty_map
from service.errors import ServiceError
from service.imaging import decode, encode_pil


class IdentityUnavailable(ServiceError):
    status, code = 422, "identity_unavailable"


def require_identity() -> None:
    if not identity.available():
        raise IdentityUnavailable("identity_reference needs the server's optional identity "
                                  f"extra, which is not installed ({identity.INSTALL_HINT})")


def prepare_identity_reference(data: bytes, max_pixels: int) -> np.ndarray:
    """A face photo of any size to the 128x128 crop the descriptor sees: centre square, resized
    (send a crop with the face centred, as the SR faces are)."""
    img, _ = decode(data, max_pixels)
    return np.asarray(to_hr(img), np.uint8)


def uncertainty_body(images: np.ndarray) -> dict[str, Any]:
    """The map of the samples images[1:] (images[0] is the served face): float16 data and the
    colour-mapped PNG (base64), on the same colour scale."""
    values = uncertainty_map(images[1:])
    vmax = colour_scale_max(values)
    png = encode_pil(render_png(values, vmax), "png")
    return {**float16_payload(values, vmax), "png": base64.b64encode(png).decode("ascii")}


def identity_distances(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Identity distance of each image (the mean and the samples) to the reference photo."""
    emb = identity.embed(np.concatenate([reference[None], images]))
    return identity.distances(emb[1:], emb[0])


def rank_by_identity(entries: list[dict[str, Any]], dist: np.ndarray) -> list[dict[str, Any]]:
    """The entries with identity_distance and same_person, the mean first, then the samples
    nearest to the reference first (ties: response order)."""
    scored = [{**e, "identity_distance": float(dist[e["index"]]),
               "same_person": bool(dist[e["index"]] < identity.SAME_PERSON_DISTANCE)}
              for e in entries]
    samples = sorted((e for e in scored if e["kind"] == "sample"),
                     key=lambda e: e["identity_distance"])
    return [*(e for e in scored if e["kind"] == "mean"), *samples]
