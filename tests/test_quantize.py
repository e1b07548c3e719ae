"""int8 graphs: every graph quantized (QDQ) but the decoder's output conv, calibrated on a pack,
its loss measured per test split and recorded in the manifest; a graph that would push the set
past the service's tolerance stays fp32; a re-export drops them."""

import re

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
    assert manifest.int8_kept_in_fp32() == ["icap"]
    assert manifest.int8.method.endswith("graphs kept whole in fp32: icap")
    assert not (model_dir / "icap.int8.onnx").exists()  # the earlier copy is gone
    pipe = OrtPipeline.from_files({g: model_dir / p for g, p in paths.items()})
    assert pipe(np.zeros((1, 3, 128, 128), np.float32)).shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="unknown graphs"):
        add_int8(model_dir, pack, count=4, graphs=("icap", "decodr"))


def _table(losses: dict[tuple[str, ...], float]):
    """A fake measure: set -> {split: its loss}, recording the sets it was asked for."""
    from facesr_core.manifest import QuantizationLoss

    asked = []

    def measure(chosen):
        asked.append(chosen)
        db = losses[chosen]
        return {"celeba_test": QuantizationLoss(count=1, psnr_fp32=20, psnr_int8=20 - db,
                                                loss_db=db)}
    return measure, asked


def test_choose_int8_graphs_keeps_the_costliest_graphs_in_fp32_until_the_rest_fits():
    from training.quantize import choose_int8_graphs

    full, pair = ("icap", "encoder", "decoder"), ("encoder", "decoder")
    measure, asked = _table({full: 0.01})
    assert choose_int8_graphs(measure, max_db=0.02)[0] == full
    assert asked == [full]  # within the tolerance: nothing else measured
    # x16's case: the ICAP alone costs the most; without it the rest fits
    alone = {("icap",): 0.07, ("encoder",): 0.005, ("decoder",): 0.001}
    measure, asked = _table({full: 0.08, pair: 0.006, **alone})
    chosen, measured = choose_int8_graphs(measure, max_db=0.02)
    assert chosen == pair and set(measured) == {full, pair, *alone}
    # each graph fine alone, but not together: the worst goes, then the next
    measure, _ = _table({full: 0.05, pair: 0.03, ("decoder",): 0.002, ("icap",): 0.015,
                         ("encoder",): 0.012})
    assert choose_int8_graphs(measure, max_db=0.02)[0] == ("decoder",)
    # nothing fits: all of them, their loss recorded (auto serves fp32)
    measure, _ = _table({full: 0.3, pair: 0.2, ("icap",): 0.3, ("encoder",): 0.2,
                         ("decoder",): 0.1})
    assert choose_int8_graphs(measure, max_db=0.02)[0] == full


def test_int8_export_leaves_in_fp32_a_graph_that_costs_too_much(tmp_path, pack, monkeypatch,
                                                                capsys):
    from facesr_core.manifest import GRAPHS
    from training import quantize
    from training.cli import export_main

    real = quantize.HeldOut.loss

    def icap_costs_a_db(self, paths):  # as x16's ICAP did: 0.056 / 0.085 dB alone
        losses = real(self, paths)
        if paths["icap"].name == "icap.int8.onnx":
            losses = {k: v.model_copy(update={"psnr_int8": v.psnr_int8 - 1,
                                              "loss_db": v.loss_db + 1})
                      for k, v in losses.items()}
        return losses

    monkeypatch.setattr(quantize.HeldOut, "loss", icap_costs_a_db)
    monkeypatch.setattr(quantize, "INT8_MAX_LOSS_DB", 0.5)  # the tiny random model's own losses
    model_dir = tmp_path / "x8"
    export_model(random_tiny(), model_dir, scale=8, preset="tiny")
    export_main(["--int8-only", "--out", str(model_dir), "--pack", str(pack),
                 "--calibration-faces", "4"])
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith("graphs kept whole in fp32: icap (loss quantized alone: icap ")
    manifest = load_manifest(model_dir)
    assert {g: f.path for g, f in manifest.int8.files.items()} == {
        "icap": "icap.onnx", "encoder": "encoder.int8.onnx", "decoder": "decoder.int8.onnx"}
    assert not (model_dir / "icap.int8.onnx").exists()
    assert re.search(r"; graphs kept whole in fp32: icap \(loss quantized alone: icap "
                     r"(0\.9|1\.0)\d\d dB; the set may lose 0\.5 dB\)$", manifest.int8.method)
    assert manifest.int8.loss_within(0.5)  # the recorded loss is the chosen set's, which fits
    monkeypatch.setattr(quantize, "INT8_MAX_LOSS_DB", 2.0)  # now the ICAP's cost is allowed
    manifest = quantize.add_int8(model_dir, pack, count=4)
    assert [f.path for f in manifest.int8.files.values()] == [f"{g}.int8.onnx" for g in GRAPHS]
