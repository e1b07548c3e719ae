"""training.report: the README's measured tables come from the manifests, docs/uncertainty.json,
docs/identity/ and bench/results/photo.json, and `--write` keeps the README in step with them."""

import json
from pathlib import Path

import pytest
from helpers import edit_manifest

from training import report

ROOT = Path(__file__).resolve().parents[1]


def split(source: str, scale: int, map_spearman: float, map_ause: float,
          pick_id: float | None = None) -> dict:
    maps = {report.SERVED_MAP: {"spearman_mean": map_spearman, "ause_mean": map_ause,
                                "beats_baseline": 0.25},
            report.BASELINE_MAP: {"spearman_mean": 0.4, "ause_mean": 0.3, "beats_baseline": 0.0}}
    res = {"source": source, "scale": scale, "faces": 4, "maps": maps}
    if pick_id is not None:
        res["identity_ranking"] = {"faces": 4, "pick_id": pick_id, "mean_id": 0.5,
                                   "random_id": 0.55, "pick_psnr": 20.0, "mean_psnr": 21.0,
                                   "random_psnr": 19.5, "pick_closer_than_mean": 0.75}
    return res


ROWS = {"bicubic": {"psnr": 20.0, "ssim": 0.5}, "deterministic": {"psnr": 22.0, "ssim": 0.6},
        "icap_mean": {"psnr": 22.5, "ssim": 0.62}, "count": 7}


def test_results_table_reads_each_manifest(model_copy):
    assert report.results_table(model_copy.parent).count("\n") == 1  # no test split: no row
    edit_manifest(model_copy, metrics={"celeba_test": ROWS, "note": "x"})
    line = report.results_table(model_copy.parent).splitlines()[-1]
    assert line.startswith("| celeba | x8 | 7 | 20.00 / 0.500 | 22.00 / 0.600 | 22.50 / 0.620")
    assert "+2.50" in line


def test_uncertainty_tables_sort_by_split_and_bold_only_the_winner():
    results = [split("utkface", 4, 0.6, 0.2), split("celeba", 8, 0.3, 0.35, pick_id=0.6),
               split("celeba", 4, 0.5, 0.1, pick_id=0.45)]
    rows = report.uncertainty_table(results).splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| celeba", "x4"], ["| celeba", "x8"],
                                                  ["| utkface", "x4"]]
    assert "| **0.500** / 0.400 | **0.100** / 0.300 | 25% |" in rows[0]
    assert "| 0.300 / 0.400 | 0.350 / 0.300 | 25% |" in rows[1]  # worse than the baseline
    picks = report.identity_ranking_table(results).splitlines()[2:]
    assert len(picks) == 2  # utkface has no identity ranking
    assert "| **0.450** / 0.500 / 0.550 | 20.00 / 21.00 / 19.50 | 75% of faces |" in picks[0]
    assert "| 0.600 / 0.500 / 0.550 |" in picks[1]


def test_identity_table_has_a_row_per_scale_and_source_from_the_eval_files(tmp_path):
    def entry(scale, source):
        rows = {p: {"id_distance": 0.1 * scale / 4, "id_same": 0.5} for p in
                ("bicubic", "deterministic", "icap_mean", "ren_oracle")}
        return {"scale": scale, "sources": [source], "rows": rows}

    (tmp_path / "x8.json").write_text(json.dumps([entry(8, "utkface"), entry(8, "celeba")]))
    (tmp_path / "x4.json").write_text(json.dumps([entry(4, "celeba")]))
    rows = report.tables(tmp_path, identity_dir=tmp_path)["identity"].splitlines()[2:]
    four, eight = ("0.100 / 50% | " * 3 + "n/a | 0.100 / 50%",
                   "0.200 / 50% | " * 3 + "n/a | 0.200 / 50%")
    assert rows == [f"| celeba | x4 | {four} |", f"| celeba | x8 | {eight} |",
                    f"| utkface | x8 | {eight} |"]


def test_photo_table_names_each_band_by_the_widths_it_holds():
    band = {"faces": 3, "recall": 2 / 3, "super_resolved": 1, "psnr_photo": 25.0,
            "psnr_bicubic": 24.5}
    photo = {"bands": [{**band, "px": [12, 41]}, {**band, "px": [12, 20]},
                       {**band, "px": [30, 41], "psnr_photo": 24.0}]}
    rows = report.photo_table(photo).splitlines()[2:]
    assert rows == ["| 12–40 px (all) | 3 | 67% | 1 | **25.00 dB** | 24.50 dB |",
                    "| 12–20 px | 3 | 67% | 1 | 25.00 dB | 24.50 dB |",
                    "| 30–40 px | 3 | 67% | 1 | 24.00 dB | 24.50 dB |"]


def test_replace_tables_keeps_indent_and_everything_outside_the_markers():
    text = ("intro\n<!-- report:a -->\n| old |\n\n<!-- /report -->\n\n- item\n\n"
            "  <!-- report:b -->\n  | old b |\n\n  <!-- /report -->\nend\n")
    new = report.replace_tables(text, {"a": "| x |\n|---|", "b": "| y |"})
    assert new == ("intro\n<!-- report:a -->\n| x |\n|---|\n\n<!-- /report -->\n\n- item\n\n"
                   "  <!-- report:b -->\n  | y |\n\n  <!-- /report -->\nend\n")
    assert report.replace_tables(new, {"a": "| x |\n|---|", "b": "| y |"}) == new
    with pytest.raises(KeyError, match="report:b"):
        report.replace_tables(text, {"a": "| x |"})


def test_write_rewrites_a_stale_table_and_says_which(tmp_path, model_copy):
    readme = tmp_path / "README.md"
    readme.write_text("# r\n<!-- report:results -->\n| stale |\n\n<!-- /report -->\n")
    edit_manifest(model_copy, metrics={"utkface_test": ROWS})
    said = []
    report.main([str(model_copy.parent), "--uncertainty", str(tmp_path / "none.json"),
                 "--photo", str(tmp_path / "none.json"), "--write", str(readme)],
                echo=said.append)
    assert report.results_table(model_copy.parent) in readme.read_text()
    assert "| stale |" not in readme.read_text() and said == [f"{readme}: 1 of 1 tables "
                                                             "changed (results)"]


def test_readme_tables_are_the_generated_ones():
    """Shipping a model rewrites models/*/manifest.json (and scripts/cpu_stage.sh the JSON files
    of its measurements); `python -m training.report models --write README.md` must follow."""
    readme = (ROOT / "README.md").read_text()
    found = report.tables(ROOT / "models", ROOT / report.UNCERTAINTY_JSON,
                          ROOT / report.PHOTO_JSON, ROOT / report.IDENTITY_DIR)
    assert sorted(report.marked_names(readme)) == sorted(found) == [
        "identity", "identity_ranking", "photo", "principal", "results", "uncertainty"]
    assert found["results"].count("\n") >= 3, "models/ holds no manifest with metrics"
    assert report.replace_tables(readme, found) == readme, (
        "README's tables are stale: python -m training.report models --write README.md")
