"""Export to ONNX: parity with PyTorch on a batch size it never saw, the manifest it writes, and
a loud failure when the graphs differ."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from synthetic import random_tiny

from facesr_core.manifest import load_manifest
from training.export import ExportError, export_model


@pytest.mark.parametrize("global_residual", [True, False])
def test_onnx_parity_and_manifest(tmp_path, global_residual):
    model = random_tiny(global_residual)
    manifest = export_model(model, tmp_path / "x8", scale=8, preset="tiny")
    loaded = load_manifest(tmp_path / "x8")  # sha256 of every file checked
    assert loaded == manifest and manifest.lr_size == 16 and manifest.opset >= 17
    assert set(manifest.files["decoder"].inputs) == (
        {"features", "z", "x"} if global_residual else {"features", "z"})
    sess = {g: ort.InferenceSession(str(tmp_path / "x8" / f"{g}.onnx")) for g in manifest.files}
    x = torch.rand(5, 3, 128, 128) * 2 - 1  # a batch size the export never saw
    mu, logvar = sess["icap"].run(None, {"x": x.numpy()})
    feats = sess["encoder"].run(None, {"x": x.numpy()})[0]
    feeds = {"features": feats, "z": mu, "x": x.numpy()}
    y = sess["decoder"].run(None, {i.name: feeds[i.name] for i in sess["decoder"].get_inputs()})[0]
    with torch.no_grad():
        want = model.predict(x)
        want_mu, want_lv = model.icap(x)
    assert np.abs(y - want.numpy()).max() <= 1e-4
    assert np.abs(mu - want_mu.numpy()).max() <= 1e-4
    assert np.abs(logvar - want_lv.numpy()).max() <= 1e-4


def test_export_fails_loudly_when_onnx_differs(tmp_path, monkeypatch):
    import training.export as export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can meet a negative tolerance
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export.export_model(random_tiny(), tmp_path / "x8", scale=8, preset="tiny",
                            tolerance=export.TOLERANCE)
