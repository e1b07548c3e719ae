"""Model speed on this machine: FLOPs, matmul peak, PyTorch eager vs ONNX Runtime, n samples,
and faster CPU variants (int8, fp16, bf16) with their PSNR change on real faces.

Sections (`--sections`, default all but ortopts and int8):
  flops    FLOPs per image (torch.utils.flop_counter), per graph and for n samples
  peak     fp32 matmul peak (torch, numpy, ONNX Runtime; 2048^2 and 4096^2; bf16 too)
  engines  PyTorch eager vs ONNX Runtime CPU at batch 1, 8, 64: ms/image, img/s, GFLOP/s
  samples  n = 10: n naive passes vs one ICAP + one encoder pass + one batched decoder call
  options  int8 static quantization (ORT QDQ), fp16 (ORT), bf16 (PyTorch autocast; ORT has no
           bf16 CPU kernels): speed at batch 1 and 8
  int8     the model folder's own fp32 and int8 graphs (manifest.json; what FACESR_PRECISION=fp32
           and =int8 serve) with the service's session options: speed at batch 1 and 8 (timed
           in alternating rounds, with int8's speed-up over fp32), and
           the PSNR loss the export recorded on each test split
  ortopts  ONNX Runtime fp32 session options: optimisation level, threads, spinning
  psnr     PSNR of each variant on real CelebA faces (opt-in data, read at run time only)

    python -m bench.model --model-dir models/x8 --sections flops peak engines --pause-training
    python -m bench.model --export-random /tmp/paper/x8   # a paper-size model, random weights
    python -m bench.model --model-dir models/x8 --provider cuda --sections flops engines samples
    python -m bench.model --model-dir models/x8 --sections int8 --pause-training

Speed does not depend on the weights; PSNR does, so `psnr` wants a trained model (models/x8).
`--pause-training` SIGSTOPs a background training job while timing (see bench/common.py).
Results are printed as markdown and written as JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import celeba_faces, machine, md_table, timeit, training_paused
from facesr_core.degradation import from_model_range
from facesr_core.latent import sample_latent
from facesr_core.manifest import GRAPHS

CALIB_OFFSET = 1000  # calibration faces come after the (at most 1000) PSNR faces


# --- models -----------------------------------------------------------------------------

def export_random(out: Path, preset: str = "paper", scale: int = 8) -> Path:
    import torch

    from training.config import ModelConfig
    from training.export import export_model
    from training.models import StochasticSR

    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset(preset))
    export_model(model, out, scale=scale, preset=preset, version="random-weights")
    return out


def load_torch(model_dir: Path):
    from training.weights import load_model

    model, scale = load_model(model_dir)
    return model.eval(), scale


PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


MAX_ROWS = 1024  # rows one call of a benchmarked pipeline may have


def ort_runner(model_dir: Path, paths: dict[str, Path] | None = None, threads: int = 0,
               level: str = "ALL", spinning: bool = True, provider: str = "cpu"):
    """The service's Runner (service/engine.py) on the graphs `paths` (default: the folder's
    fp32 graphs), with the service's session options for these settings plus the optimisation
    `level`, on `provider`; whole calls, no padding. A session that ONNX Runtime moved to
    another provider is an error."""
    import onnxruntime as ort

    from facesr_core.manifest import load_manifest
    from service.engine import Runner, batch_buckets, session_options
    from service.settings import Settings

    manifest = load_manifest(model_dir, verify=False)
    paths = paths or {g: manifest.graph_path(model_dir, g) for g in GRAPHS}
    so = session_options(Settings(model_dir=model_dir, intra_op_threads=threads,
                                  ort_spin_wait=spinning))
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    sessions = {g: ort.InferenceSession(str(p), so, providers=PROVIDERS[provider])
                for g, p in paths.items()}
    for g, sess in sessions.items():
        if sess.get_providers()[0] != PROVIDERS[provider][0]:
            raise SystemExit(f"{g}: ONNX Runtime runs it on {sess.get_providers()[0]}, not "
                             f"{PROVIDERS[provider][0]} (available: "
                             f"{ort.get_available_providers()})")
    buckets = batch_buckets(MAX_ROWS)
    return Runner(model_dir, manifest, sessions, PROVIDERS[provider], buckets, buckets, pad=False)


class TorchPipeline:
    """The same three steps in PyTorch eager (fp32, or bf16 autocast + channels_last), with the
    same uint8 output as Runner.superresolve."""

    def __init__(self, model, bf16: bool = False):
        import torch

        self.torch, self.bf16 = torch, bf16
        self.model = model.to(memory_format=torch.channels_last) if bf16 else model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        xt = torch.from_numpy(x)
        if self.bf16:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            mu, _ = self.model.icap(xt)
            feats = self.model.sr.encoder(xt)
            y = self.model.sr.decoder(feats, mu, xt)
        return from_model_range(y.float().numpy())


# --- FLOPs and peak -----------------------------------------------------------------------

def count_flops(model) -> dict[str, float]:
    """FLOPs (2 per multiply-add; convolutions and matmuls) of each graph for one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 128, 128)

    def flops(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    with torch.no_grad():
        mu, _ = model.icap(x)
        feats = model.sr.encoder(x)
    out = {"icap": flops(lambda: model.icap(x)),
           "encoder": flops(lambda: model.sr.encoder(x)),
           "decoder": flops(lambda: model.sr.decoder(feats, mu, x)),
           "encoder_decoder": flops(lambda: model.sr(x, mu))}
    out["superresolve"] = out["icap"] + out["encoder"] + out["decoder"]
    return out


def sample_flop_ratios(f: dict[str, float], n: int) -> dict[str, float]:
    one = f["encoder"] + f["decoder"]
    return {
        # Encoder-Decoder only (the framing): one encoder pass + n decoder passes
        "enc+n_dec / one image": (f["encoder"] + n * f["decoder"]) / one,
        # what /samples runs: ICAP + encoder + (n + 1) decodes (the mean too), vs /superresolve
        "service samples / superresolve": (f["icap"] + f["encoder"] + (n + 1) * f["decoder"])
        / f["superresolve"],
        "naive n full passes / one image": n * 1.0,
    }


def ort_matmul_session(size: int):
    """A one-node ONNX MatMul graph: ONNX Runtime's own SGEMM (MLAS) on two size^2 inputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def matmul_peak(sizes: tuple[int, ...] = (2048, 4096), seconds: float = 3.0) -> dict:
    """Best GFLOP/s of a square fp32 (and bf16) matmul in torch, numpy and ONNX Runtime."""
    import torch

    out: dict[str, float] = {}

    def best(key: str, fn, size: int) -> None:
        rate = 2 * size**3 / min(timeit(fn, min_reps=5, min_s=seconds)) / 1e9
        out[key] = max(out.get(key, 0.0), rate)

    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        an, bn = a.numpy(), b.numpy()
        sess = ort_matmul_session(size)
        ab, bb = a.bfloat16(), b.bfloat16()
        best("torch_fp32", lambda a=a, b=b: torch.mm(a, b), size)
        best("numpy_fp32", lambda an=an, bn=bn: an @ bn, size)
        best("onnxruntime_fp32", lambda s=sess, an=an, bn=bn: s.run(None, {"a": an, "b": bn}),
             size)
        best("torch_bf16", lambda ab=ab, bb=bb: torch.mm(ab, bb), size)
    return out


# --- engines, samples ---------------------------------------------------------------------

def random_input(batch: int, seed: int | None = None) -> np.ndarray:
    """A seeded batch of network inputs x (float32 N,3,128,128 in [-1, 1]); the seed defaults
    to the batch size."""
    rng = np.random.default_rng(batch if seed is None else seed)
    return rng.uniform(-1, 1, (batch, 3, 128, 128)).astype(np.float32)


def time_batch(fn, batch: int, budget_s: float) -> list[float]:
    x = random_input(batch)
    reps = 2 if batch >= 32 else 3
    return timeit(lambda: fn(x), min_reps=reps, min_s=budget_s, warmup=1, max_reps=200)


def engines(pipes: dict, batches: list[int], flops_img: float, peak: float | None,
            budget_s: float) -> list[dict]:
    rows = []
    for batch in batches:
        for name, fn in pipes.items():
            times = time_batch(fn, batch, budget_s)
            med = statistics.median(times)
            gflops = flops_img * batch / med / 1e9
            rows.append({"engine": name, "batch": batch, "reps": len(times),
                         "ms_per_call": med * 1e3, "ms_per_image": med * 1e3 / batch,
                         "images_per_s": batch / med, "gflop_per_s": gflops,
                         "pct_of_peak": 100 * gflops / peak if peak else None})
            print(f"  {name} batch {batch}: {med * 1e3 / batch:.1f} ms/image "
                  f"({gflops:.0f} GFLOP/s)", flush=True)
    return rows


def samples_compare(runner, n: int, budget_s: float) -> dict:
    x1 = random_input(1, seed=0)
    mu, _, _ = runner.encode(x1)
    eps = np.random.default_rng(1).standard_normal((n, *mu.shape[1:])).astype(np.float32)

    def one() -> None:
        runner.superresolve(x1)

    def naive() -> None:  # ICAP once, then a full Encoder-Decoder pass per sample
        m, lv, _ = runner.encode(x1)
        for i in range(n):
            (f,) = runner.sessions["encoder"].run(None, {"x": x1})
            runner.decode(f, sample_latent(m, lv, eps[i:i + 1]), x1)

    def batched() -> None:  # the service: one ICAP, one encoder, one decoder call (mean + n)
        m, lv, f = runner.encode(x1)
        runner.decode(f, np.concatenate([m, sample_latent(m, lv, eps)]), x1)

    out = {}
    for name, fn in (("one image", one), ("naive", naive), ("batched decoder", batched)):
        out[name] = statistics.median(timeit(fn, min_reps=3, min_s=budget_s))
        print(f"  {name}: {out[name] * 1e3:.0f} ms", flush=True)
    return {"n": n, "seconds": out,
            "ratio_naive": out["naive"] / out["one image"],
            "ratio_batched": out["batched decoder"] / out["one image"]}


# --- faster CPU variants ------------------------------------------------------------------

def convert_fp16(model_dir: Path, out: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for g in GRAPHS:
        m = convert_float_to_float16(onnx.load(str(model_dir / f"{g}.onnx")),
                                     keep_io_types=True)
        onnx.save(m, str(out / f"{g}.onnx"))
        paths[g] = out / f"{g}.onnx"
    return paths


def build_variants(model_dir: Path, model, work: Path, calib: np.ndarray) -> dict:
    """name -> callable (x float32 NCHW -> y float32), or the error that stopped it."""
    from training.quantize import OrtPipeline, calibration_feeds, quantize_graphs

    variants: dict = {}
    fp32_paths = {g: model_dir / f"{g}.onnx" for g in GRAPHS}
    variants["ORT fp32 (service)"] = ort_runner(model_dir).superresolve
    variants["ORT fp32, spinning off"] = ort_runner(model_dir, spinning=False).superresolve
    feeds = calibration_feeds(OrtPipeline.from_files(fp32_paths), calib)
    for name, graphs in (("ORT int8 static (all graphs)", GRAPHS),
                         ("ORT int8 static (encoder only)", ("encoder",))):
        try:
            tag = "int8_" + "_".join(graphs)
            paths = quantize_graphs(fp32_paths, work / tag, feeds, graphs)
            variants[name] = ort_runner(model_dir, paths).superresolve
            if graphs == GRAPHS:
                variants[f"{name}, spinning off"] = ort_runner(model_dir, paths,
                                                               spinning=False).superresolve
        except Exception as exc:  # noqa: BLE001 - reported as a result
            variants[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        variants["ORT fp16"] = ort_runner(model_dir,
                                          convert_fp16(model_dir, work / "fp16")).superresolve
    except Exception as exc:  # noqa: BLE001
        variants["ORT fp16"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    variants["ORT bf16"] = ("not run: ONNX Runtime's CPU provider has no bf16 Conv or "
                            "ConvTranspose (NOT_IMPLEMENTED at opset 22; opset 17, ours, does "
                            "not allow bf16 Conv at all)")
    variants["PyTorch fp32 eager"] = TorchPipeline(model)
    import copy

    variants["PyTorch bf16 autocast + channels_last"] = TorchPipeline(copy.deepcopy(model),
                                                                      bf16=True)
    return variants


def options_speed(variants: dict, batches: list[int], budget_s: float) -> list[dict]:
    rows = []
    for name, fn in variants.items():
        if isinstance(fn, str):
            rows.append({"variant": name, "batch": None, "error": fn})
            continue
        for batch in batches:
            med = statistics.median(time_batch(fn, batch, budget_s))
            rows.append({"variant": name, "batch": batch, "ms_per_image": med * 1e3 / batch,
                         "images_per_s": batch / med})
            print(f"  {name} batch {batch}: {med * 1e3 / batch:.1f} ms/image", flush=True)
    return rows


def shipped_precisions(model_dir: Path, batches: list[int], budget_s: float) -> dict:
    """Speed of the folder's fp32 and int8 graphs with the service's session options (spinning
    off), and the int8 loss recorded in its manifest."""
    from facesr_core.manifest import load_manifest

    manifest = load_manifest(model_dir)
    if manifest.int8 is None:
        raise SystemExit(f"{model_dir}: no int8 graphs in the manifest (facesr-export --int8-only)")
    pipes = {precision: ort_runner(
        model_dir, {g: manifest.graph_path(model_dir, g, precision) for g in GRAPHS},
        spinning=False).superresolve for precision in manifest.precisions}
    return {"speed": interleaved_speed(pipes, batches, budget_s),
            "loss": {k: v.model_dump() for k, v in manifest.int8.loss.items()}}


def interleaved_speed(pipes: dict, batches: list[int], budget_s: float) -> list[dict]:
    """Median ms per image of each pipe, timed in alternating rounds (order reversed every other
    round) so that the machine's drift lands on all of them alike; then each one's speed-up
    over the first."""
    rows = []
    for batch in batches:
        x = random_input(batch)
        times: dict[str, list[float]] = {name: [] for name in pipes}
        for fn in pipes.values():
            fn(x)  # warm-up
        start, rnd = time.perf_counter(), 0
        while rnd < 6 or time.perf_counter() - start < budget_s * len(pipes):
            for name in (list(pipes) if rnd % 2 else list(pipes)[::-1]):
                t0 = time.perf_counter()
                pipes[name](x)
                times[name].append(time.perf_counter() - t0)
            rnd += 1
        base = statistics.median(times[next(iter(pipes))])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"variant": name, "batch": batch, "reps": len(ts),
                         "ms_per_image": med * 1e3 / batch, "images_per_s": batch / med,
                         "speedup": base / med})
            print(f"  {name} batch {batch}: {med * 1e3 / batch:.1f} ms/image "
                  f"({base / med:.2f}x)", flush=True)
    return rows


def psnr_on_faces(variants: dict, scale: int, count: int, batch: int = 16) -> list[dict]:
    from facesr_core.degradation import bicubic_upsample, degrade, to_model_range
    from facesr_core.quality import psnr

    faces = celeba_faces(count)
    hr = np.stack([np.asarray(f) for f in faces])
    x = np.stack([to_model_range(bicubic_upsample(degrade(f, scale))) for f in faces])
    bicubic = from_model_range(x)
    outputs = {}
    for name, fn in variants.items():
        if isinstance(fn, str):
            continue
        outputs[name] = np.concatenate([fn(x[i:i + batch]) for i in range(0, len(x), batch)])

    def mean_psnr(images: np.ndarray, refs: np.ndarray) -> float:
        return float(np.mean([psnr(r, im[None])[0] for r, im in zip(refs, images,
                                                                     strict=True)]))

    base_name = "ORT fp32 (service)"
    base = mean_psnr(outputs[base_name], hr)
    rows = [{"variant": "bicubic", "psnr": mean_psnr(bicubic, hr), "delta_db": None,
             "psnr_vs_fp32": None}]
    for name, out in outputs.items():
        p = mean_psnr(out, hr)
        rows.append({"variant": name, "psnr": p, "delta_db": p - base,
                     "psnr_vs_fp32": mean_psnr(out, outputs[base_name])})
    return rows


# --- main -----------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models/x8"),
                   help="exported model folder to time (default models/x8)")
    p.add_argument("--export-random", type=Path, metavar="DIR",
                   help="export a paper-size model with random weights to DIR and use it")
    p.add_argument("--sections", nargs="+",
                   default=["flops", "peak", "engines", "samples", "options", "psnr"],
                   help="sections to run, of those above (default all but ortopts and int8)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64],
                   help="batch sizes of `engines` (default 1 8 64)")
    p.add_argument("--option-batches", type=int, nargs="+", default=[1, 8],
                   help="batch sizes of `options`, `ortopts` and `int8` (default 1 8)")
    p.add_argument("--budget-s", type=float, default=3.0, help="min timed seconds per cell")
    p.add_argument("--n", type=int, default=10, help="samples for the `samples` section")
    p.add_argument("--faces", type=int, default=100, help="CelebA faces for `psnr`")
    p.add_argument("--calib", type=int, default=32, help="CelebA faces for int8 calibration")
    p.add_argument("--peak", type=float, help="fp32 peak GFLOP/s (else measured or from --json)")
    p.add_argument("--pause-training", action="store_true",
                   help="SIGSTOP a background training job while timing (bench/common.py)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                   help="ONNX Runtime provider of `engines` and `samples` (cuda: onnxruntime-gpu; "
                        "`engines` then times ONNX Runtime only)")
    p.add_argument("--json", type=Path, default=Path("bench/results/model.json"),
                   help="results file, read if it exists and updated after each section "
                        "(default bench/results/model.json)")
    a = p.parse_args()

    if a.export_random:
        if not (a.export_random / "manifest.json").exists():
            export_random(a.export_random)
        a.model_dir = a.export_random
    model, scale = load_torch(a.model_dir)
    results = json.loads(a.json.read_text()) if a.json.exists() else {}
    results.setdefault("runs", [])
    results["runs"].append({"machine": machine(), "model_dir": str(a.model_dir),
                            "argv": sys.argv[1:], "provider": a.provider})
    print(f"# {a.model_dir} (x{scale}, {model.cfg.channels} ch)  {machine()}")

    def save() -> None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")

    if "flops" in a.sections:
        f = count_flops(model)
        results["flops"] = {"per_image": f, "samples_ratios": sample_flop_ratios(f, a.n),
                            "n": a.n}
        print(md_table(["graph", "GFLOP / image"], [[k, v / 1e9] for k, v in f.items()]))
        print(md_table([f"n = {a.n}", "FLOP ratio"],
                       [[k, v] for k, v in results["flops"]["samples_ratios"].items()]))
        save()
    flops_img = results.get("flops", {}).get("per_image", {}).get("superresolve")
    if flops_img is None:
        flops_img = count_flops(model)["superresolve"]

    timed = [s for s in ("peak", "engines", "samples", "ortopts", "options", "int8")
             if s in a.sections]
    work = tempfile.TemporaryDirectory()
    variants: dict = {}
    if "options" in a.sections or "psnr" in a.sections:  # quantize before any pause
        t0 = time.perf_counter()
        variants = build_variants(a.model_dir, model, Path(work.name),
                                  calib_inputs(a.calib, scale))
        print(f"variants built in {time.perf_counter() - t0:.0f} s", flush=True)
    if timed:
        with training_paused(a.pause_training) as paused:
            if "peak" in a.sections:
                results["peak"] = matmul_peak()
                print(md_table(["square matmul", "GFLOP/s"],
                               [[k, v] for k, v in results["peak"].items()]))
                save()
            measured = results.get("peak", {})
            peak = a.peak or max((v for k, v in measured.items() if k.endswith("fp32")),
                                 default=None)
            if "engines" in a.sections:
                import torch

                runner = ort_runner(a.model_dir, provider=a.provider)
                pipes = {f"ONNX Runtime {a.provider.upper()} fp32": runner.superresolve}
                if a.provider == "cpu":
                    pipes = {"PyTorch eager fp32": TorchPipeline(model), **pipes}
                print(f"torch threads {torch.get_num_threads()}")
                results["engines"] = engines(pipes, a.batches, flops_img, peak, a.budget_s)
                save()
            if "samples" in a.sections:
                results["samples"] = samples_compare(ort_runner(a.model_dir, provider=a.provider),
                                                     a.n, a.budget_s)
                save()
            if "ortopts" in a.sections:
                pipes = {f"level {lv}, {th or 'default'} threads, spinning {sp}": ort_runner(
                    a.model_dir, None, th, lv, sp).superresolve for lv, th, sp in (
                    ("ALL", 0, True), ("EXTENDED", 0, True), ("BASIC", 0, True),
                    ("ALL", 1, True), ("ALL", 0, False))}
                results["ortopts"] = options_speed(pipes, a.option_batches, a.budget_s)
                save()
            if "options" in a.sections:
                results["options"] = options_speed(variants, a.option_batches, a.budget_s)
                save()
            if "int8" in a.sections:
                results["int8"] = shipped_precisions(a.model_dir, a.option_batches, a.budget_s)
                save()
        results["runs"][-1]["training_paused"] = {k: v for k, v in paused.items()}
        save()
    if "psnr" in a.sections:
        results["psnr"] = {"model_dir": str(a.model_dir), "faces": a.faces,
                           "calibration_faces": a.calib,
                           "rows": psnr_on_faces(variants, scale, a.faces)}
        save()
        print(md_table(["variant", "PSNR dB", "change dB", "PSNR vs fp32 output"],
                       [[r["variant"], r["psnr"], r["delta_db"], r["psnr_vs_fp32"]]
                        for r in results["psnr"]["rows"]]))
    work.cleanup()
    print(f"wrote {a.json}")


def calib_inputs(count: int, scale: int) -> np.ndarray:
    """Calibration inputs for int8: CelebA faces kept apart from the PSNR set, else noise."""
    from facesr_core.degradation import bicubic_upsample, degrade, to_model_range

    try:
        faces = celeba_faces(count, offset=CALIB_OFFSET)
    except FileNotFoundError:
        faces = []
    if not faces:
        return random_input(count, seed=0)
    return np.stack([to_model_range(bicubic_upsample(degrade(f, scale))) for f in faces])


if __name__ == "__main__":
    main()
