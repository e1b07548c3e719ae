"""The README's results table: every model's manifest metrics beside the paper's Table 1.

    python -m training.report models
"""

from __future__ import annotations

import sys
from pathlib import Path

from facesr_core.manifest import MANIFEST_NAME, load_manifest

# Table 1 of the paper (PSNR / SSIM), bicubic and ours; their protocol is not stated.
PAPER = {
    ("utkface", 4): ((28.04, 0.86), (33.52, 0.94)), ("utkface", 8): ((23.11, 0.71), (27.86, 0.85)),
    ("utkface", 16): ((19.51, 0.59), (23.44, 0.74)), ("celeba", 4): ((24.88, 0.76), (29.24, 0.88)),
    ("celeba", 8): ((21.15, 0.60), (24.91, 0.76)), ("celeba", 16): ((17.95, 0.48), (21.33, 0.64)),
}
ROWS = ("bicubic", "deterministic", "icap_mean")


def fmt(m: dict | None) -> str:
    return f"{m['psnr']:.2f} / {m['ssim']:.3f}" if m else "n/a"


def table(model_root: Path) -> str:
    head = ("| data | scale | test faces | bicubic | deterministic | ICAP mean | "
            "best-of-10 (faces; dB over the mean on them) | mean − bicubic (dB) | "
            "paper: bicubic → ours (gain) |\n" + "|---" * 9 + "|\n")
    lines = []
    for manifest_path in sorted(model_root.glob(f"*/{MANIFEST_NAME}")):
        manifest = load_manifest(manifest_path.parent, verify=False)
        scale = manifest.scale
        for key, rows in sorted(manifest.metrics.items()):
            data = key.removesuffix("_test")
            gain = rows["icap_mean"]["psnr"] - rows["bicubic"]["psnr"]
            best, same = rows.get("best_of_10"), rows.get("icap_mean_best_of_faces",
                                                             rows["icap_mean"])
            best_cell = (f"{fmt(best)} ({rows.get('best_of_count', '?')}; "
                         f"{best['psnr'] - same['psnr']:+.2f})" if best else "n/a")
            (pb, _), (po, _) = PAPER.get((data, scale), ((float("nan"), 0), (float("nan"), 0)))
            paper = f"{pb:.2f} → {po:.2f} ({po - pb:+.2f})"
            lines.append((data, scale, f"| {data} | x{scale} | {rows.get('count', '?')} | "
                          + " | ".join(fmt(rows.get(r)) for r in ROWS)
                          + f" | {best_cell} | {gain:+.2f} | {paper} |"))
    return head + "\n".join(line for *_, line in sorted(lines))


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "models")))
