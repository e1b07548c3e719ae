"""examples/: the small inputs the README's curl examples send, made from scikit-image's
astronaut photo (Eileen Collins, NASA: public domain; no image of the training data is used).

    python scripts/make_examples.py [--out examples]

hr128.png is the 128x128 face (the reference for best-of-n); lr8.png, lr16.png and lr32.png are
its x16, x8 and x4 LR versions (the service's own degradation); face_20px.png is the face at a
size the service does not infer a scale from (it needs ?scale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facesr_core.degradation import SCALES, degrade, lr_size, to_hr  # noqa: E402

FACE_BOX = (slice(25, 205), slice(150, 330))  # rows, columns of the face in the photo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("examples"), help="output folder")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    hr = to_hr(Image.fromarray(data.astronaut()[FACE_BOX]))
    images = {"hr128.png": hr, "face_20px.png": hr.resize((20, 20), Image.Resampling.BICUBIC)}
    images.update({f"lr{lr_size(s)}.png": degrade(hr, s) for s in SCALES})
    for name, img in images.items():
        img.save(a.out / name, optimize=True)
        print(f"wrote {a.out / name} ({img.size[0]}x{img.size[1]})")


if __name__ == "__main__":
    main()
