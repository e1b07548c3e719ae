"""docs/uncertainty.png for the README: per shipped scale, LR | SR (the served ICAP mean) |
uncertainty map | real error |SR - HR|, each map with its own scale bar, on scikit-image's
astronaut photo (public domain; no dataset image). With --curves, also the mean sparsification
curves of `python -m training.uncertainty` (numbers only, no face) as docs/sparsification.png.

    python scripts/uncertainty_figure.py [--models models] [--n 10]
        [--curves runs/unc/uncertainty.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facesr_core.degradation import to_model_range  # noqa: E402
from facesr_core.uncertainty import render_png, uncertainty_map  # noqa: E402
from service.engine import load_models  # noqa: E402
from service.sampling import MAP_DRAWS, sample_set  # noqa: E402
from service.settings import Settings  # noqa: E402
from training.data import network_input  # noqa: E402
from training.uncertainty import BASELINE_MAP, SERVED_MAP  # noqa: E402
from training.visuals import nearest_lr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_figure import astronaut_face  # noqa: E402

GAP, HEAD = 6, 16
COLUMNS = ("LR", "SR (ICAP mean)", "uncertainty", "real error |SR - HR|")


def row(runner, hr: np.ndarray, n: int) -> list[Image.Image]:
    x = to_model_range(network_input(hr, runner.scale))
    images = sample_set(runner, x, seed=0, n=n, draws=runner.draws(MAP_DRAWS)).images
    error = np.abs(images[0].astype(np.float32) - hr.astype(np.float32)).mean(-1)
    return [Image.fromarray(nearest_lr(hr, runner.scale)), Image.fromarray(images[0]),
            render_png(uncertainty_map(images[1:])), render_png(error)]


def compose(rows: list[list[Image.Image]], labels: list[str]) -> Image.Image:
    widths = [max(r[c].width for r in rows) for c in range(len(COLUMNS))]
    height = rows[0][0].height
    sheet = Image.new("RGB", (40 + sum(widths) + GAP * len(widths),
                              HEAD + len(rows) * (height + GAP)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(11)
    xs = np.cumsum([40, *[w + GAP for w in widths]])
    for x, title in zip(xs, COLUMNS, strict=False):
        draw.text((int(x), 2), title, fill=(0, 0, 0), font=font)
    for i, (images, label) in enumerate(zip(rows, labels, strict=True)):
        y = HEAD + i * (height + GAP)
        draw.text((4, y + height // 2 - 6), label, fill=(0, 0, 0), font=font)
        for x, img in zip(xs, images, strict=False):
            sheet.paste(img, (int(x), y))
    return sheet


def curves(results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    fig, axes = plt.subplots(1, len(data), figsize=(3.2 * len(data), 3.0), sharey=True)
    for ax, res in zip(np.atleast_1d(axes), data, strict=True):
        fractions = np.linspace(0, 0.98, len(res["oracle_curve"]))
        ax.plot(fractions, res["oracle_curve"], "k--", label="oracle")
        for name in (SERVED_MAP, BASELINE_MAP):
            ax.plot(fractions, res["maps"][name]["curve"], label=name)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(f"{res['source']} x{res['scale']} ({res['faces']} faces)", fontsize=9)
        ax.set_xlabel("fraction of pixels removed")
    np.atleast_1d(axes)[0].set_ylabel("mean error left / mean error")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--n", type=int, default=10, help="samples behind each map (default 10)")
    p.add_argument("--out", type=Path, default=Path("docs/uncertainty.png"))
    p.add_argument("--curves", type=Path, help="uncertainty.json of python -m "
                   "training.uncertainty: also docs/sparsification.png")
    a = p.parse_args()
    runners = load_models(Settings(model_dir=a.models, providers="cpu", max_samples=a.n))
    hr = astronaut_face()
    scales = sorted(runners)
    figure = compose([row(runners[s], hr, a.n) for s in scales], [f"x{s}" for s in scales])
    figure.convert("RGB").quantize(256).save(a.out, optimize=True)  # a palette keeps clones small
    print(f"wrote {a.out}")
    if a.curves:
        curves(a.curves, a.out.with_name("sparsification.png"))
        print(f"wrote {a.out.with_name('sparsification.png')}")


if __name__ == "__main__":
    main()
