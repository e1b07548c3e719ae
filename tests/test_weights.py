"""Loading a model back from an exported folder goes through the manifest contract
(facesr_core.manifest.load_manifest): its format version, its list of weights and their sha256;
training.report reads the metrics the same way (tests/test_report.py)."""

import json

import pytest
from helpers import edit_manifest

from facesr_core.manifest import MANIFEST_NAME, ManifestError
from training.report import results_table
from training.weights import load_model


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
        results_table(model_copy.parent)

