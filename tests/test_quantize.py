"""int8 graphs: every graph quantized (QDQ) but the decoder's output conv, calibrated on a pack,
its loss measured per test split and recorded in the manifest; a re-export drops them."""

import pytest
from synthetic import random_tiny

from facesr_core.manifest import load_manifest
from training.export import export_model


def test_int8_export_quantizes_every_graph_and_records_the_loss(tmp_path, pack, capfd):
    import onnx

    from training.quantize import CONV_OPS, add_int8, load_graph, output_convs

    model_dir = tmp_path / "x8"
    fp32 = export_model(random_tiny(), model_dir, scale=8, preset="tiny")
    manifest = add_int8(model_dir, pack, count=8)
    assert "histogram" not in capfd.readouterr().out  # ORT's calibration progress kept quiet
    assert load_manifest(model_dir) == manifest  # every sha256 checked, the int8 ones too
    assert manifest.files == fp32.files and manifest.int8 is not None  # fp32 left as it was
    for graph, entry in manifest.int8.files.items():
        assert entry.path == f"{graph}.int8.onnx" and entry.inputs == fp32.files[graph].inputs
        ops = {n.op_type for n in onnx.load(str(model_dir / entry.path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert manifest.int8.calibration["faces"] == 8
    decoder = onnx.load(str(model_dir / manifest.int8.files["decoder"].path)).graph
    dequantized = {o for n in decoder.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights = {n.name: n.input[1] for n in decoder.node if n.op_type in CONV_OPS}
    kept = output_convs(load_graph(model_dir / "decoder.onnx"))
    assert kept == ["/decoder/ConvBlock3/Conv"]  # the conv under the residual's Tanh
    assert all(w in dequantized for name, w in weights.items() if name not in kept)
    assert weights[kept[0]] not in dequantized  # the output conv stays fp32
    (split, loss), = manifest.int8.loss.items()  # the pack's one source with a test split
    assert split == "utkface_test" and loss.count == 4
    assert loss.loss_db == pytest.approx(loss.psnr_fp32 - loss.psnr_int8)
    assert 10 < loss.psnr_int8 < 60 and abs(loss.loss_db) < 3
    export_model(random_tiny(), model_dir, scale=8, preset="tiny")  # a re-export drops them
    assert load_manifest(model_dir).int8 is None and not list(model_dir.glob("*.int8.onnx"))


def test_int8_graphs_left_out_stay_fp32_in_the_int8_set(tmp_path, pack):
    import numpy as np

    from training.quantize import OrtPipeline, add_int8

    model_dir = tmp_path / "x8"
    export_model(random_tiny(), model_dir, scale=8, preset="tiny")
    add_int8(model_dir, pack, count=4)
    manifest = add_int8(model_dir, pack, count=4, graphs=("encoder", "decoder"))
    assert load_manifest(model_dir) == manifest
    paths = {g: f.path for g, f in manifest.int8.files.items()}
    assert paths == {"icap": "icap.onnx", "encoder": "encoder.int8.onnx",
                     "decoder": "decoder.int8.onnx"}
    assert manifest.int8.files["icap"].sha256 == manifest.files["icap"].sha256
    assert manifest.int8.method.endswith("graphs kept whole in fp32: icap")
    assert not (model_dir / "icap.int8.onnx").exists()  # the earlier copy is gone
    pipe = OrtPipeline.from_files({g: model_dir / p for g, p in paths.items()})
    assert pipe(np.zeros((1, 3, 128, 128), np.float32)).shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="unknown graphs"):
        add_int8(model_dir, pack, count=4, graphs=("icap", "decodr"))
