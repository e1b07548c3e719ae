"""docs/figure.png for the README: for each shipped scale, LR | bicubic | SR (ICAP mean) |
4 samples | HR, on scikit-image's astronaut photo (public domain; no dataset image is used).

    python scripts/readme_figure.py [--models models] [--out docs/figure.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facesr_core.degradation import from_model_range, to_hr  # noqa: E402
from training.data import make_pair  # noqa: E402
from training.visuals import nearest_lr, tile  # noqa: E402
from training.weights import load_model  # noqa: E402


def astronaut_face() -> np.ndarray:
    return np.asarray(to_hr(Image.fromarray(data.astronaut()[25:205, 150:330])))


@torch.no_grad()
def row(model_dir: Path, hr: np.ndarray, n: int = 4) -> list[np.ndarray]:
    model, scale = load_model(model_dir)
    x = torch.from_numpy(make_pair(hr, scale)[0])[None]
    mean = model.predict(x)
    samples = model.predict(x, temperature=1.0, n=n, generator=torch.Generator().manual_seed(0))
    outs = from_model_range(torch.cat([x, mean, samples]).numpy())
    return [nearest_lr(hr, scale), *outs, hr]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--out", type=Path, default=Path("docs/figure.png"))
    a = p.parse_args()
    hr = astronaut_face()
    dirs = sorted((d for d in a.models.iterdir() if (d / "manifest.json").exists()),
                  key=lambda d: int(d.name.lstrip("x")))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tile([row(d, hr) for d in dirs]).convert("RGB").quantize(256).save(a.out, optimize=True)
    print(f"wrote {a.out}: rows {[d.name for d in dirs]}")


if __name__ == "__main__":
    main()
