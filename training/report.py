"""The README's measured tables, generated from what training and evaluation wrote: the Results
table (each model's manifest metrics beside the paper's Table 1), the principal draws' table
(each manifest's `principal_draws.calibration`) and, from `python -m training.uncertainty
--identity`'s JSON (kept as docs/uncertainty.json), the uncertainty-map and identity-ranking
tables, from docs/identity/x<s>.json (`facesr-eval --identity`) the identity table, and from
bench/results/photo.json the whole-photo table.

    python -m training.report models                      # print the tables
    python -m training.report models --write README.md    # replace them in the README

In the README each table sits between `<!-- report:NAME -->` and `<!-- /report -->`; `--write`
rewrites what is between the two and nothing else.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from facesr_core.manifest import MANIFEST_NAME, Manifest, load_manifest
from training.uncertainty import BASELINE_MAP, SERVED_MAP

# Table 1 of the paper (PSNR / SSIM), bicubic and ours; their protocol is not stated.
PAPER = {
    ("utkface", 4): ((28.04, 0.86), (33.52, 0.94)), ("utkface", 8): ((23.11, 0.71), (27.86, 0.85)),
    ("utkface", 16): ((19.51, 0.59), (23.44, 0.74)), ("celeba", 4): ((24.88, 0.76), (29.24, 0.88)),
    ("celeba", 8): ((21.15, 0.60), (24.91, 0.76)), ("celeba", 16): ((17.95, 0.48), (21.33, 0.64)),
}
ROWS = ("bicubic", "deterministic", "icap_mean")
UNCERTAINTY_JSON = Path("docs/uncertainty.json")
PHOTO_JSON = Path("bench/results/photo.json")  # python -m bench.photo --out
IDENTITY_DIR = Path("docs/identity")  # x<s>.json: facesr-eval --identity's metrics.json
MARKED = re.compile(r"^(?P<indent> *)<!-- report:(?P<name>\w+) -->\n"
                    r".*?^(?P=indent)<!-- /report -->", re.M | re.S)


def fmt(m: dict | None) -> str:
    return f"{m['psnr']:.2f} / {m['ssim']:.3f}" if m else "n/a"


def signed(x: float, digits: int = 3) -> str:
    """+0.054, −0.169 (a true minus sign, as the README's prose writes it)."""
    return f"{x:+.{digits}f}".replace("-", "−")


def bold_if(text: str, condition: bool) -> str:
    return f"**{text}**" if condition else text


def manifests(model_root: Path) -> list[Manifest]:
    paths = sorted(model_root.glob(f"*/{MANIFEST_NAME}"))
    return sorted((load_manifest(p.parent, verify=False) for p in paths), key=lambda m: m.scale)


def results_table(model_root: Path) -> str:
    head = ["| data | scale | test faces | bicubic | deterministic | ICAP mean | "
            "best-of-10 (faces; dB over the mean on them) | mean − bicubic (dB) | "
            "paper: bicubic → ours (gain) |", "|---" * 9 + "|"]
    lines = []
    for manifest in manifests(model_root):
        scale = manifest.scale
        for key, rows in sorted(manifest.metrics.items()):
            if not isinstance(rows, dict) or not {"bicubic", "icap_mean"} <= rows.keys():
                continue  # not a test split's rows (a model exported without --metrics)
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
    return "\n".join(head + [line for *_, line in sorted(lines)])


def principal_table(model_root: Path) -> str:
    """Best-of-10 minus the ICAP mean (dB) with each shipped basis, and with the ICAP's draws at
    the model's `sample_temperature`: the numbers `training.principal --install` wrote."""
    lines = ["| scale | basis: rank k, T | val | test CelebA | test UTKFace | "
             "the ICAP's draws: val / CelebA / UTKFace |", "|---" * 6 + "|"]
    for manifest in manifests(model_root):
        draws = manifest.principal_draws
        if not draws:
            continue
        cal, temperature = draws.calibration, manifest.sample_temperature
        basis, icap = f"k{draws.rank}_T{draws.temperature:g}", f"icap_T{temperature:g}"
        test = [cal["test"][source]["best_of_10_minus_mean_db"] for source in ("celeba",
                                                                              "utkface")]
        lines.append(
            f"| x{manifest.scale} | {draws.rank}, {draws.temperature:g} "
            f"({cal['fit'].replace('-', ' ')}) | {cal['val_best_of_10_minus_mean_db'][basis]:+.3f}"
            " | " + " | ".join(bold_if(f"{t[basis]:+.3f}", t[basis] > 0) for t in test)
            + " | " + " / ".join(signed(d[icap]) for d in
                                 [cal["val_best_of_10_minus_mean_db"], *test])
            + f" (T = {temperature:g}) |")
    return "\n".join(lines)


def by_split(results: list[dict]) -> list[dict]:
    return sorted(results, key=lambda r: (r["source"], r["scale"]))


def uncertainty_table(results: list[dict]) -> str:
    """The served map (the samples' standard deviation) against the bicubic-gradient baseline."""
    lines = ["| data | scale | faces | Spearman: map / baseline | AUSE: map / baseline | "
             "faces where the map's AUSE is lower |", "|---" * 6 + "|"]
    for res in by_split(results):
        ours, base = res["maps"][SERVED_MAP], res["maps"][BASELINE_MAP]
        rho, ause = ours["spearman_mean"], ours["ause_mean"]
        lines.append(
            f"| {res['source']} | x{res['scale']} | {res['faces']} | "
            f"{bold_if(f'{rho:.3f}', rho > base['spearman_mean'])} / "
            f"{base['spearman_mean']:.3f} | {bold_if(f'{ause:.3f}', ause < base['ause_mean'])} / "
            f"{base['ause_mean']:.3f} | {ours['beats_baseline']:.0%} |")
    return "\n".join(lines)


def identity_ranking_table(results: list[dict]) -> str:
    lines = ["| data | scale | faces | identity distance to the HR: pick / mean / random sample "
             "| PSNR (dB): pick / mean / random | pick nearer the person than the mean |",
             "|---" * 6 + "|"]
    for res in by_split(results):
        r = res.get("identity_ranking")
        if not r or not r.get("faces"):
            continue
        pick = bold_if(f"{r['pick_id']:.3f}", r["pick_id"] < min(r["mean_id"], r["random_id"]))
        lines.append(
            f"| {res['source']} | x{res['scale']} | {r['faces']} | {pick} / {r['mean_id']:.3f}"
            f" / {r['random_id']:.3f} | {r['pick_psnr']:.2f} / {r['mean_psnr']:.2f} / "
            f"{r['random_psnr']:.2f} | {r['pick_closer_than_mean']:.0%} of faces |")
    return "\n".join(lines)


def identity_table(evaluations: list[dict]) -> str:
    """Identity distance to the HR / share under 0.6, per path: `facesr-eval --identity`'s
    metrics.json entries, one per scale and source."""
    paths = ("bicubic", "deterministic", "icap_mean", "best_of_10", "ren_oracle")
    lines = ["| data | scale | bicubic | deterministic | ICAP mean | best-of-10 | "
             "REN oracle (sees the HR) |", "|---" * 7 + "|"]
    for entry in sorted(evaluations, key=lambda e: (e["sources"], e["scale"])):
        rows = entry["rows"]
        cells = [f"{rows[p]['id_distance']:.3f} / {rows[p]['id_same']:.0%}" if p in rows
                 else "n/a" for p in paths]
        lines.append(f"| {'+'.join(entry['sources'])} | x{entry['scale']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def photo_table(photo: dict) -> str:
    """bench.photo's bands: the first is every face, [min-px, max-px + 1) wide."""
    bands = photo["bands"]
    widest = bands[0]["px"][1] - 1
    lines = ["| face width | faces | found | super-resolved | PSNR `/photo` | PSNR bicubic |",
             "|---" * 6 + "|"]
    for i, band in enumerate(bands):
        lo, hi = band["px"]
        ours, bicubic = band["psnr_photo"], band["psnr_bicubic"]
        lines.append(
            f"| {lo:g}–{min(hi, widest):g} px{' (all)' if i == 0 else ''} | {band['faces']} | "
            f"{band['recall']:.0%} | {band['super_resolved']} | "
            f"{bold_if(f'{ours:.2f} dB', i == 0 and ours > bicubic)} | {bicubic:.2f} dB |")
    return "\n".join(lines)


def tables(model_root: Path, uncertainty_json: Path | None = None,
           photo_json: Path | None = None, identity_dir: Path | None = None) -> dict[str, str]:
    """Each README table by the name its markers give it (the JSON ones where the file is)."""
    found = {"results": results_table(model_root), "principal": principal_table(model_root)}
    evaluations = sorted(identity_dir.glob("x*.json")) if identity_dir is not None else []
    if evaluations:
        found["identity"] = identity_table(
            [e for path in evaluations for e in json.loads(path.read_text())])
    if uncertainty_json is not None and uncertainty_json.is_file():
        results = json.loads(uncertainty_json.read_text())
        found |= {"uncertainty": uncertainty_table(results),
                  "identity_ranking": identity_ranking_table(results)}
    if photo_json is not None and photo_json.is_file():
        found["photo"] = photo_table(json.loads(photo_json.read_text()))
    return found


def replace_tables(text: str, found: dict[str, str]) -> str:
    """`text` with every marked table replaced by `found`'s (indented as its markers are); a
    marker naming a table `found` lacks is an error, not left stale."""
    def replace(m: re.Match) -> str:
        indent, name = m["indent"], m["name"]
        if name not in found:
            raise KeyError(f"<!-- report:{name} -->: no such table (have: {sorted(found)})")
        body = "".join(f"{indent}{line}\n" for line in found[name].splitlines())
        return f"{indent}<!-- report:{name} -->\n{body}\n{indent}<!-- /report -->"

    return MARKED.sub(replace, text)


def marked_names(text: str) -> list[str]:
    return [m["name"] for m in MARKED.finditer(text)]


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> None:
    p = argparse.ArgumentParser("python -m training.report", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="?", default=Path("models"),
                   help="the shipped model folder (default: models)")
    p.add_argument("--uncertainty", type=Path, default=UNCERTAINTY_JSON,
                   help="uncertainty.json of `python -m training.uncertainty --identity` "
                        f"(default: {UNCERTAINTY_JSON})")
    p.add_argument("--photo", type=Path, default=PHOTO_JSON,
                   help=f"the JSON of `python -m bench.photo --out` (default: {PHOTO_JSON})")
    p.add_argument("--identity", type=Path, default=IDENTITY_DIR,
                   help="a folder of x<s>.json, each the metrics.json of `facesr-eval --identity` "
                        f"on that scale (default: {IDENTITY_DIR})")
    p.add_argument("--write", type=Path, metavar="README",
                   help="replace the marked tables in this file instead of printing them")
    a = p.parse_args(argv)
    found = tables(a.models, a.uncertainty, a.photo, a.identity)
    if a.write is None:
        for name, table in found.items():
            echo(f"<!-- report:{name} -->\n{table}\n")
        return
    old = a.write.read_text()
    new = replace_tables(old, found)
    a.write.write_text(new)
    changed = [m["name"] for m, n in zip(MARKED.finditer(old), MARKED.finditer(new), strict=True)
               if m[0] != n[0]]
    echo(f"{a.write}: {len(changed)} of {len(marked_names(new))} tables changed "
         f"({', '.join(changed) or 'none'})")


if __name__ == "__main__":
    main()
