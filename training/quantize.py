"""int8 graphs for the CPU: the three exported graphs statically quantized, calibrated at export,
and the PSNR they lose against fp32 on each test split, all recorded in manifest.json.

Method: ONNX Runtime's `quantize_static` in QDQ format, per-channel int8 weights, uint8
activations, Percentile calibration (99.999; BENCHMARKS.md has its speed and quality on this
CPU). Two kinds of node stay fp32:
- the nodes that read the image input x: x is the bicubic-upsampled face, finer than 8 bits, and
  rounding it to uint8 cost the trained x8 model 0.45 dB (CelebA) and 0.81 dB (UTKFace) through
  the encoder's first conv alone; kept in fp32, 0.002 and 0.004 dB (40 test faces each);
- the decoder's output convs (ConvBlock3, whose Tanh is the face's residual over x): rounding
  its output to uint8 lands on the pixels.
Chosen on the x8 validation faces (90 CelebA / 64 UTKFace), loss in dB: MinMax with only the
image readers in fp32 0.014 / 0.037; Percentile 0.011 / 0.019; the output conv in fp32 as well,
MinMax 0.011 / 0.031, Percentile 0.008 / 0.012.

Calibration inputs: `count` faces drawn (seeded) from the train split of a pack, degraded at the
model's scale exactly as the service degrades an upload. The icap and encoder graphs see those
inputs; the decoder sees the fp32 encoder's features with two latents per face, the ICAP mean
and one sample mu + sigma * eps, so that the latents of /samples and /traverse fall inside the
calibrated ranges too.

Without a pack the fallback is random crops of scikit-image's sample photographs (the astronaut,
a cat, a coffee cup, a rocket: public domain, bundled with scikit-image). No test split, so no
loss is measured, and FACESR_PRECISION=auto keeps such a model on fp32.

The loss: on every test split of the pack (one per source: celeba_test, utkface_test), the mean
RGB PSNR (uint8, no border crop, the protocol of facesr-eval) of the ICAP-mean output of the
fp32 graphs and of the int8 graphs against the HR faces; loss_db = fp32 - int8.

Which graphs: all three when their set loses at most INT8_MAX_LOSS_DB (the tolerance of
FACESR_PRECISION=auto) on every split. Past it, each graph is measured quantized alone and the
worst stay fp32 inside the int8 set, one at a time, until the rest fits (choose_int8_graphs).
x16's ICAP was such a graph: alone it lost 0.056 / 0.085 dB (CelebA / UTKFace), the encoder
0.005 / 0.002, the decoder under 0.002, and neither fp32 output convs nor another percentile
helped. `facesr-export --int8-graphs` names the graphs by hand instead.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facesr_core.degradation import from_model_range
from facesr_core.latent import sample_latent
from facesr_core.manifest import (
    GRAPHS,
    INT8_MAX_LOSS_DB,
    Int8Graphs,
    Manifest,
    ModelFile,
    QuantizationLoss,
    load_manifest,
    sha256_of,
    write_manifest,
)
from facesr_core.quality import psnr
from training.config import CALIBRATION_FACES
from training.data import FacePack, make_pair

METHOD = ("onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, "
          "Percentile calibration (99.999); the nodes that read the image input x and the "
          "decoder's output convs kept in fp32")
CALIBRATION_PERCENTILE = 99.999
IMAGE_INPUT = "x"
FALLBACK_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
BATCH = 16
CONV_OPS = ("Conv", "ConvTranspose")
FP32_OUTPUT_CONVS = ("decoder",)  # graphs whose output convs stay fp32: the decoder writes pixels
KEPT_IN_FP32 = "graphs kept whole in fp32"  # the method string's tail that names them


def int8_file_name(graph: str) -> str:
    return f"{graph}.int8.onnx"


class OrtPipeline:
    """ICAP + encoder + decoder in ONNX Runtime: the service's /superresolve, without it."""

    def __init__(self, sessions: dict[str, ort.InferenceSession]):
        self.s = sessions
        self.dec_inputs = [i.name for i in sessions["decoder"].get_inputs()]

    @classmethod
    def from_files(cls, paths: dict[str, Path]) -> OrtPipeline:
        so = ort.SessionOptions()  # no spin-waiting, as the service: it halves the speed on
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a few cores
        return cls({g: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                    for g, p in paths.items()})

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mu, logvar = self.s["icap"].run(None, {"x": x})
        (features,) = self.s["encoder"].run(None, {"x": x})
        return mu, logvar, features

    def decoder_feeds(self, features: np.ndarray, z: np.ndarray,
                      x: np.ndarray) -> dict[str, np.ndarray]:
        m = len(z)
        rep = (lambda a: a if len(a) == m else np.repeat(a, m, axis=0))  # noqa: E731
        feeds = {"features": rep(features), "z": z, "x": rep(x)}
        return {k: feeds[k] for k in self.dec_inputs}

    def decode(self, features: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        (y,) = self.s["decoder"].run(None, self.decoder_feeds(features, z, x))
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The ICAP-mean output, float32 in [-1, 1]."""
        mu, _, features = self.encode(x)
        return self.decode(features, mu, x)


# --- calibration inputs ------------------------------------------------------------------------

def pack_faces(pack: Path | str, count: int, seed: int = 0) -> np.ndarray:
    """`count` HR faces (uint8 N,128,128,3) drawn from the pack's train split."""
    faces = FacePack(pack, split="train", sample=count, seed=seed)
    if len(faces) == 0:
        raise SystemExit(f"{pack}: no faces in its train split to calibrate int8 on")
    return faces.hr


def fallback_faces(count: int, seed: int = 0) -> np.ndarray:
    """`count` random square crops (128 px, some flipped) of scikit-image's sample photos."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)() for name in FALLBACK_PHOTOS]
    out = []
    for k in range(count):
        photo = photos[k % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(128, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((128, 128),
                                                                           Image.BICUBIC)
        face = np.asarray(crop)
        out.append(face[:, ::-1] if rng.random() < 0.5 else face)
    return np.stack(out)


def model_inputs(hr: np.ndarray, scale: int) -> np.ndarray:
    """HR faces (uint8 N,128,128,3) to network inputs x (float32 N,3,128,128), as served."""
    return np.stack([make_pair(face, scale)[0] for face in hr])


def calibration_feeds(fp32: OrtPipeline, xs: np.ndarray, seed: int = 0,
                      samples: bool = True) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph, the input batches its calibration runs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, list[dict]] = {g: [] for g in GRAPHS}
    for start in range(0, len(xs), BATCH):
        x = xs[start:start + BATCH]
        mu, logvar, features = fp32.encode(x)
        feeds["icap"].append({"x": x})
        feeds["encoder"].append({"x": x})
        feeds["decoder"].append(fp32.decoder_feeds(features, mu, x))
        if samples:
            z = sample_latent(mu, logvar, rng.standard_normal(mu.shape, dtype=np.float32))
            feeds["decoder"].append(fp32.decoder_feeds(features, z, x))
    return feeds


# --- quantization --------------------------------------------------------------------------

def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]],
                   keep_output_convs: bool = False) -> None:
    """One graph, statically quantized (see METHOD), from src to dst."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[dict]):
            self.items: Iterator[dict] = iter(items)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / src.name
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        graph = load_graph(pre)
        fp32_nodes = image_readers(graph) + (output_convs(graph) if keep_output_convs else [])
        # the Percentile calibrator print()s its progress, several lines a graph
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(dst), Reader(feeds), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=fp32_nodes,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})


def load_graph(path: Path):
    """The onnx GraphProto of a model file (its weights left on disk if external)."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def image_readers(graph) -> list[str]:
    """Names of the nodes that take the image input x (kept in fp32, see the docstring)."""
    return [n.name for n in graph.node if IMAGE_INPUT in n.input]


def output_convs(graph) -> list[str]:
    """Names of the convs whose output reaches a graph output through no other conv."""
    producer = {out: node for node in graph.node for out in node.output}
    found, seen = [], set()
    todo = [o.name for o in graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in CONV_OPS:
            found.append(node.name)
        else:
            todo += list(node.input)
    return found


def quantize_graphs(src: dict[str, Path], out: Path, feeds: dict[str, list[dict]],
                    graphs: tuple[str, ...] = GRAPHS) -> dict[str, Path]:
    """Quantize `graphs` of src into out/<graph>.int8.onnx; the others stay src's (fp32)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(src)
    for g in graphs:
        paths[g] = out / int8_file_name(g)
        quantize_graph(src[g], paths[g], feeds[g], keep_output_convs=g in FP32_OUTPUT_CONVS)
    return paths


# --- quality ------------------------------------------------------------------------------

def mean_psnr(pipe: OrtPipeline, xs: np.ndarray, hr: np.ndarray) -> float:
    """Mean RGB PSNR (uint8) of the ICAP-mean outputs against the HR faces."""
    scores = []
    for start in range(0, len(xs), BATCH):
        out = from_model_range(pipe(xs[start:start + BATCH]))
        scores += [psnr(h, o[None])[0] for h, o in zip(hr[start:start + BATCH], out, strict=True)]
    return float(np.mean(scores))


def held_out_splits(pack: Path | str, limit: int | None = None) -> dict[str, np.ndarray]:
    """'<source>_test' -> HR faces, for every source with a test split in the pack (read once)."""
    test = FacePack(pack, split="test")
    splits = {}
    for src in sorted(set(test.sources.tolist())):
        hr = test.hr[test.sources == src]
        splits[f"{src}_test"] = hr[:limit] if limit else hr
    return splits


class HeldOut:
    """The test splits as model inputs, with the fp32 graphs' PSNR on each, measured once."""

    def __init__(self, splits: dict[str, np.ndarray], scale: int, fp32: OrtPipeline):
        self.hr = splits
        self.xs = {name: model_inputs(hr, scale) for name, hr in splits.items()}
        self.psnr_fp32 = {name: mean_psnr(fp32, self.xs[name], hr) for name, hr in splits.items()}

    def loss(self, paths: dict[str, Path]) -> dict[str, QuantizationLoss]:
        """What the graphs in `paths` (int8, or a mix) lose against fp32 on each split."""
        int8, losses = OrtPipeline.from_files(paths), {}
        for name, hr in self.hr.items():
            a, b = self.psnr_fp32[name], mean_psnr(int8, self.xs[name], hr)
            losses[name] = QuantizationLoss(count=len(hr), psnr_fp32=a, psnr_int8=b, loss_db=a - b)
        return losses


Losses = dict[str, QuantizationLoss]


def worst_loss(losses: Losses) -> float:
    return max(v.loss_db for v in losses.values())


def choose_int8_graphs(measure: Callable[[tuple[str, ...]], Losses],
                       graphs: tuple[str, ...] = GRAPHS, max_db: float = INT8_MAX_LOSS_DB,
                       ) -> tuple[tuple[str, ...], dict[tuple[str, ...], Losses]]:
    """The graphs to quantize, and every set measured on the way (set -> its losses).

    All of `graphs` when their int8 set is within max_db on every split. Otherwise each graph
    is measured quantized alone, and the worst of them stay fp32, one at a time, until the
    rest fits. When no set fits, all of `graphs`: their loss is recorded and
    FACESR_PRECISION=auto serves fp32."""
    measured: dict[tuple[str, ...], Losses] = {}

    def loss_of(chosen: tuple[str, ...]) -> float:
        if chosen not in measured:
            measured[chosen] = measure(chosen)
        return worst_loss(measured[chosen])

    if loss_of(graphs) <= max_db:
        return graphs, measured
    alone = {g: loss_of((g,)) for g in graphs}
    chosen = list(graphs)
    for worst in sorted(graphs, key=alone.__getitem__, reverse=True)[:-1]:
        chosen.remove(worst)
        if loss_of(tuple(chosen)) <= max_db:
            return tuple(chosen), measured
    return graphs, measured


def kept_note(kept: list[str], measured: dict[tuple[str, ...], Losses],
              max_db: float) -> str:
    """The method string's tail: which graphs stay fp32, and (chosen at export) why."""
    if not kept:
        return ""
    why = [f"{g} {worst_loss(measured[(g,)]):.3f} dB" for g in kept if (g,) in measured]
    return (f"; {KEPT_IN_FP32}: {', '.join(kept)}" +
            (f" (loss quantized alone: {', '.join(why)}; the set may lose "
             f"{max_db} dB)" if why else ""))


# --- the model folder ---------------------------------------------------------------------

def add_int8(model_dir: Path | str, pack: Path | str | None = None,
             count: int = CALIBRATION_FACES, eval_limit: int | None = None,
             seed: int = 0, graphs: tuple[str, ...] | None = None) -> Manifest:
    """Quantize the fp32 graphs of an exported model folder and record the int8 graphs (their
    sha256, calibration and loss) in its manifest. The fp32 files are left as they are.

    graphs: the graphs to quantize; the others stay fp32 in the int8 set (its entry names the
    fp32 file). None: all of them, unless their set loses more than INT8_MAX_LOSS_DB on a
    test split; then the graphs that cost the most stay fp32 (choose_int8_graphs; x16's ICAP
    alone lost 0.056 / 0.085 dB). Without a pack nothing is measured and all are quantized."""
    if graphs is not None and (unknown := set(graphs) - set(GRAPHS)):
        raise ValueError(f"unknown graphs {sorted(unknown)}; the graphs are {', '.join(GRAPHS)}")
    root = Path(model_dir)
    manifest = load_manifest(root, verify=False)
    manifest.verify(root, ("fp32",))
    fp32_paths = {g: manifest.graph_path(root, g) for g in GRAPHS}
    fp32 = OrtPipeline.from_files(fp32_paths)
    if pack is not None:
        hr = pack_faces(pack, count, seed)
        calibration = {"source": f"{Path(pack).name}, train split", "faces": len(hr),
                       "seed": seed}
    else:
        hr = fallback_faces(count, seed)
        calibration = {"source": "fallback: scikit-image sample photos " +
                       ", ".join(FALLBACK_PHOTOS), "faces": len(hr), "seed": seed}
    feeds = calibration_feeds(fp32, model_inputs(hr, manifest.scale), seed)
    asked = graphs if graphs is not None else GRAPHS
    int8_paths = quantize_graphs(fp32_paths, root, feeds, asked)

    def mixed(chosen: tuple[str, ...]) -> dict[str, Path]:
        return {g: int8_paths[g] if g in chosen else fp32_paths[g] for g in GRAPHS}

    chosen, measured, max_db = asked, {}, INT8_MAX_LOSS_DB  # read now: tests lower it
    if pack is not None:
        held_out = HeldOut(held_out_splits(pack, eval_limit), manifest.scale, fp32)
        if graphs is None:
            chosen, measured = choose_int8_graphs(lambda c: held_out.loss(mixed(c)),
                                                  max_db=max_db)
        else:
            measured = {chosen: held_out.loss(mixed(chosen))}
    kept = [g for g in GRAPHS if g not in chosen]
    for g in kept:  # an int8 copy left out (or an earlier export's) would sit there unused
        (root / int8_file_name(g)).unlink(missing_ok=True)
    manifest.int8 = Int8Graphs(
        files={g: ModelFile(path=p.name, sha256=sha256_of(p),
                            inputs=manifest.files[g].inputs, outputs=manifest.files[g].outputs)
               for g, p in mixed(chosen).items()},
        method=METHOD + kept_note(kept, measured, max_db),
        calibration=calibration, loss=measured.get(chosen, {}))
    write_manifest(root, manifest)
    return manifest
