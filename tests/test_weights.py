"""Loading a model back from an exported folder goes through the manifest contract
(facesr_core.manifest.load_manifest): its format version, its list of weights and their sha256;
training.report reads the metrics the same way."""

import json
import shutil
from pathlib import Path

import pytest

from facesr_core.manifest import MANIFEST_NAME, ManifestError
from training.report import table
from training.weights import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir / "x8", root / "x8")
    return root / "x8"


def edit_manifest(folder, **changes) -> None:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_an_exported_folder_loads_from_the_weights_its_manifest_lists(model_copy):
    model, scale = load_model(model_copy)
    assert scale == 8 and not model.training
    (model_copy / "phase1.safetensors").rename(model_copy / "theta.safetensors")
    weights = json.loads((model_copy / MANIFEST_NAME).read_text())["weights"]
    weights["phase1"]["path"] = "theta.safetensors"
    edit_manifest(model_copy, weights=weights)
    assert load_model(model_copy)[1] == 8  # the listed name, not a hard-coded one


def test_corrupt_weights_and_unknown_format_versions_are_refused(model_copy):
    with open(model_copy / "phase2.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        load_model(model_copy)
    edit_manifest(model_copy, format_version=99)
    with pytest.raises(ManifestError, match="format_version 99"):
        load_model(model_copy)
    with pytest.raises(ManifestError, match="format_version 99"):
        table(model_copy.parent)


def test_report_table_reads_each_manifest(model_copy):
    rows = {"bicubic": {"psnr": 20.0, "ssim": 0.5}, "deterministic": {"psnr": 22.0, "ssim": 0.6},
            "icap_mean": {"psnr": 22.5, "ssim": 0.62}, "count": 7}
    edit_manifest(model_copy, metrics={"celeba_test": rows})
    line = table(model_copy.parent).splitlines()[-1]
    assert line.startswith("| celeba | x8 | 7 | 20.00 / 0.500 | 22.00 / 0.600 | 22.50 / 0.620")
    assert "+2.50" in line


def test_readme_results_table_is_the_shipped_manifests_table():
    """Shipping a model rewrites models/*/manifest.json; the README's Results table must follow
    (`python -m training.report models` prints it)."""
    shipped = table(ROOT / "models")
    assert shipped.count("\n") >= 3, "models/ holds no manifest with metrics"
    assert shipped in (ROOT / "README.md").read_text(), "README's Results table is stale"
