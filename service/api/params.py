"""Request parameters of the inference routes, and the one place where the ones that depend on
the settings meet their limits (`within_limit`): n (FACESR_MAX_SAMPLES) and steps
(FACESR_MAX_STEPS). Each count is a dependency, so the admission dependency reads the same
value the endpoint gets (FastAPI solves it once per request)."""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal

from fastapi import Depends, File, Query, UploadFile

from facesr_core.uncertainty import MIN_SAMPLES
from service.errors import InvalidParameter
from service.sampling import SEED_MAX
from service.state import StateDep

DEFAULT_SAMPLES = 10  # /samples without ?n (at most FACESR_MAX_SAMPLES)
DEFAULT_STEPS = 8  # /traverse without ?steps (at most FACESR_MAX_STEPS)
MAX_TEMPERATURE = 10.0


class Scale(IntEnum):
    """The scale factors (an IntEnum: query strings like '4' validate, unlike a Literal)."""

    x4 = 4
    x8 = 8
    x16 = 16


IMAGE_HELP = ("LR face crop: PNG, JPEG, WebP or BMP; 8, 16 or 32 px square infers the scale "
              "(x16, x8, x4)")
ImageField = Annotated[UploadFile, File(description=IMAGE_HELP)]
ReferenceField = Annotated[UploadFile | None, File(description="HR face, exactly 128x128")]
IdentityReferenceField = Annotated[UploadFile | None, File(description=(
    "another photo of the same person (a face crop, centred; any size): samples are ordered by "
    "identity distance to it (needs the server's identity extra, else 422)"))]
ScaleParam = Annotated[Scale | None, Query(description="4, 8 or 16; default: from the size")]
SeedParam = Annotated[int | None, Query(ge=0, le=SEED_MAX, description=(
    "samples: draws 0..n-1 of this seed; traverse: z_start = draw 0, z_end = draw 1 (unless "
    "seed_end); default: random, returned in X-FaceSR-Seed"))]
SeedEndParam = Annotated[int | None, Query(ge=0, le=SEED_MAX,
                                           description="z_end: draw 0 of this seed")]
TemperatureParam = Annotated[float | None, Query(ge=0.0, le=MAX_TEMPERATURE, description=(
    "scales the draws; 0 gives the mean; default: the model's calibrated temperature for "
    "the draws used (/v1/models: principal_draws.temperature, or sample_temperature for icap)"))]
DrawsParam = Annotated[Literal["principal", "icap"] | None, Query(description=(
    "principal: a few draws along the model's principal directions of the ICAP mean's code "
    "error (ours; the default where the model ships a basis, /v1/models default_draws); "
    "icap: the paper's draws from the ICAP's Gaussian over the whole latent"))]


def within_limit(name: str, value: int | None, default: int, limit: int, setting: str) -> int:
    """`value`, or `default` when it is None (never above the limit); 422 above the limit."""
    if value is None:
        return min(default, limit)
    if value > limit:
        raise InvalidParameter(f"query.{name}: {value} is over this service's limit of {limit} "
                               f"({setting})")
    return value


def sample_count(state: StateDep, n: Annotated[int | None, Query(ge=1, description=(
        f"samples; default {DEFAULT_SAMPLES}, at most FACESR_MAX_SAMPLES"))] = None) -> int:
    """n of /samples."""
    return within_limit("n", n, DEFAULT_SAMPLES, state.settings.max_samples,
                        "FACESR_MAX_SAMPLES")


def step_count(state: StateDep, steps: Annotated[int | None, Query(ge=2, description=(
        f"frames, ends included; default {DEFAULT_STEPS}, at most FACESR_MAX_STEPS"))] = None,
               ) -> int:
    """steps of /traverse."""
    return within_limit("steps", steps, DEFAULT_STEPS, state.settings.max_steps,
                        "FACESR_MAX_STEPS")


def wants_uncertainty(n: Annotated[int, Depends(sample_count)],
                      uncertainty: Annotated[bool, Query(description=(
        "add the uncertainty map: the per-pixel standard deviation of the n samples (n >= 2), "
        "as float16 base64 and a colour-mapped PNG with a scale bar"))] = False) -> bool:
    """`uncertainty` of /superresolve and /samples; 422 when n is too small for a map."""
    if uncertainty and n < MIN_SAMPLES:
        raise InvalidParameter(f"query.n: the uncertainty map is the samples' standard "
                               f"deviation and needs n >= {MIN_SAMPLES}, got {n}")
    return uncertainty
