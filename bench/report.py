"""Markdown tables for BENCHMARKS.md from the JSON that bench.model and bench.service write
(bench/results/*.json), so the document quotes the measured numbers exactly.

    python -m bench.report                  # every table it has results for
    python -m bench.report --results DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import md_table


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def f1(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def model_tables(m: dict) -> list[str]:
    out = []
    latest: dict[str, dict] = {}  # the run that wrote each section last
    for run in m["runs"]:
        argv = run["argv"]
        secs = argv[argv.index("--sections") + 1:] if "--sections" in argv else ["all"]
        for sec in secs:
            if sec.startswith("--"):
                break
            latest[sec] = run
    for run in {id(r): r for r in latest.values()}.values():
        pause = run.get("training_paused", {})
        out.append(f"Run: `python -m bench.model {' '.join(run['argv'])}` on "
                   f"{run['machine']['date']}; training paused: {pause.get('paused', '–')}, "
                   f"other processes {f1(pause.get('foreign_cpu_pct'))}% CPU.")
    if "flops" in m:
        f = m["flops"]["per_image"]
        out.append(md_table(["graph (one 128x128 image)", "GFLOP"],
                            [[k, f"{v / 1e9:.2f}"] for k, v in f.items()]))
        out.append(md_table([f"n = {m['flops']['n']} samples", "FLOP ratio to one image"],
                            [[k, f"{v:.2f}"] for k, v in m["flops"]["samples_ratios"].items()]))
    if "peak" in m:
        out.append(md_table(["square matmul (best of 2048², 4096²)", "GFLOP/s"],
                            [[k, f"{v:.0f}"] for k, v in m["peak"].items()]))
    if "engines" in m:
        out.append(md_table(
            ["engine", "batch", "ms / call", "ms / image", "images / s", "GFLOP/s",
             "% of fp32 peak"],
            [[r["engine"], r["batch"], f"{r['ms_per_call']:.0f}", f"{r['ms_per_image']:.1f}",
              f"{r['images_per_s']:.1f}", f"{r['gflop_per_s']:.0f}",
              f"{r['pct_of_peak']:.0f}%" if r["pct_of_peak"] else "–"]
             for r in m["engines"]]))
    if "samples" in m:
        s = m["samples"]
        sec = s["seconds"]
        out.append(md_table(
            [f"n = {s['n']} (ONNX Runtime)", "ms", "× one image"],
            [["one image (ICAP + encoder + decoder)", f"{sec['one image'] * 1e3:.0f}", "1.00"],
             [f"naive: ICAP + {s['n']} full Encoder-Decoder passes",
              f"{sec['naive'] * 1e3:.0f}", f"{s['ratio_naive']:.2f}"],
             [f"ICAP + 1 encoder + 1 decoder call of {s['n'] + 1} (service)",
              f"{sec['batched decoder'] * 1e3:.0f}", f"{s['ratio_batched']:.2f}"]]))
    for key, title in (("ortopts", "ONNX Runtime fp32 session options"),
                       ("options", "variant")):
        if key in m:
            rows = {}
            for r in m[key]:
                row = rows.setdefault(r["variant"], {"error": r.get("error")})
                if r.get("batch"):
                    row[r["batch"]] = r["ms_per_image"]
            batches = sorted({r["batch"] for r in m[key] if r.get("batch")})
            out.append(md_table(
                [title, *[f"ms / image, batch {b}" for b in batches]],
                [[name, *([f1(row.get(b)) for b in batches] if not row["error"]
                          else [row["error"]] + [""] * (len(batches) - 1))]
                 for name, row in rows.items()]))
    if "psnr" in m:
        p = m["psnr"]
        out.append(f"PSNR on {p['faces']} CelebA faces (model {p['model_dir']}, int8 calibrated "
                   f"on {p.get('calibration_faces')} other faces):")
        out.append(md_table(["variant", "PSNR dB", "change dB", "PSNR vs fp32 output dB"],
                            [[r["variant"], f"{r['psnr']:.2f}",
                              "–" if r["delta_db"] is None else f"{r['delta_db']:+.3f}",
                              "–" if r["psnr_vs_fp32"] is None else f"{r['psnr_vs_fp32']:.1f}"]
                             for r in p["rows"]]))
    return out


def load_tables(d: dict) -> list[str]:
    out = [f"Run: `python -m bench.service {' '.join(d['argv'])}` on {d['machine']['date']}; "
           f"training paused: {d['training_paused'].get('paused')}, other processes "
           f"{f1(d['training_paused'].get('foreign_cpu_pct'))}% CPU."]
    b = d["bare"]
    if "foreign_cpu_pct" in b:
        cells = [("bare", b), *((f"{r['batching']}/{r['concurrency']}", r) for r in d["load"]),
                 ("samples", d["samples"])]
        out.append("Other processes' CPU share during each part: " + ", ".join(
            f"{k} {f1(v.get('foreign_cpu_pct'))}%" for k, v in cells) + ".")
    out.append(md_table(
        ["bare pipeline (no HTTP)", "p50 ms", "p95 ms", "images / s"],
        [["one image: decode, resize, 3 graphs, PNG", f"{b['one_ms']['p50']:.1f}",
          f"{b['one_ms']['p95']:.1f}", f"{b['one_images_per_s']:.1f}"],
         [f"batch of {b['batch']}", "", "", f"{b['batch_images_per_s']:.1f}"],
         [f"/samples n={b['samples_n']} (JSON)", f"{b['samples_ms']['p50']:.1f}",
          f"{b['samples_ms']['p95']:.1f}", ""]]))
    out.append(md_table(
        ["endpoint", "micro-batching", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms",
         "errors", "statuses", "mean batch"],
        [["/superresolve", r["batching"], r["concurrency"], f"{r['throughput_rps']:.1f}",
          f"{r['p50']:.0f}", f"{r['p95']:.0f}", f"{r['p99']:.0f}", r["errors"],
          ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
          f1(r["mean_batch"])] for r in d["load"]]
        + [["/samples?n=10", "–", 1, f"{d['samples']['throughput_rps']:.1f}",
            f"{d['samples']['p50']:.0f}", f"{d['samples']['p95']:.0f}",
            f"{d['samples']['p99']:.0f}", d["samples"]["errors"],
            ", ".join(f"{k}: {v}" for k, v in d["samples"]["statuses"].items()), "–"]]))
    names = {"overhead_p50": "service p50 / bare p50 (1 client)",
             "samples_vs_one_p50": "/samples?n=10 p50 / /superresolve p50 (1 client)",
             "bare_samples_vs_one_p50": "bare: samples n=10 / one image",
             "batched_16_vs_bare_batched": "16 clients, batching on / bare batched throughput",
             "batched_64_vs_bare_batched": "64 clients, batching on / bare batched throughput",
             "batching_gain_16": "16 clients: batching on / off throughput"}
    out.append(md_table(["ratio", "value"], [[names.get(k, k), f"{d[k]:.2f}"]
                                              for k in names if k in d]))
    return out


def soak_tables(d: dict) -> list[str]:
    s, r = d["soak"], d["rss"]
    out = [f"Run: `python -m bench.service {' '.join(d['argv'])}` on {d['machine']['date']}; "
           f"training paused: {d['training_paused'].get('paused')}, other processes "
           f"{f1(d['training_paused'].get('foreign_cpu_pct'))}% CPU."]
    out.append(md_table(
        ["clients", "seconds", "requests", "200", "503 (all with Retry-After)", "other",
         "req/s", "p50 ms", "p99 ms", "max ms", "client timeout s"],
        [[s["concurrency"], f"{s['seconds']:.0f}", s["requests"], s["statuses"].get("200", 0),
          f"{s['statuses'].get('503', 0)} ({s['503_without_retry_after']} without)",
          sum(v for k, v in s["statuses"].items() if k not in ("200", "503")),
          f"{s['throughput_rps']:.1f}", f"{s['p50']:.0f}", f"{s['p99']:.0f}",
          f"{s['max_latency_ms']:.0f}", d["client_timeout_s"]]]))
    out.append(md_table(
        ["server RSS", "MiB"],
        [["after the warm load (start)", f"{r['after_warm_load_mib']:.0f}"],
         ["max in the first 10 s", f"{r['first_10s_max_mib']:.0f}"],
         ["max", f"{r['max_mib']:.0f}"], ["end", f"{r['end_mib']:.0f}"],
         ["growth, start to end", f"{r['growth_from_warm_pct']:+.1f}%"],
         ["growth, first 10 s to end", f"{r['growth_after_10s_pct']:+.1f}%"]]))
    if "sigterm" in d:
        t = d["sigterm"]
        out.append(md_table(
            ["SIGTERM under load", "value"],
            [["admitted by the app (in flight) at SIGTERM", f1(t["in_flight_at_sigterm"])],
             ["200s answered after SIGTERM", t.get("ok_answered_after_sigterm", "–")],
             ["connections closed without an answer", t.get("closed_without_answer", "–")],
             ["answers", ", ".join(f"{k}: {v}" for k, v in t["statuses"].items())],
             ["exit code", t["exit_code"]], ["signal to exit, s", f"{t['shutdown_s']:.1f}"]]))
    out.append(md_table(["check", "passed"], [[k, v] for k, v in d["checks"].items()]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=Path("bench/results"),
                   help="folder of model.json, load.json, load_spin_on.json and soak.json "
                        "(default bench/results)")
    a = p.parse_args()
    for name, fn in (("model", model_tables), ("load", load_tables),
                     ("load_spin_on", load_tables), ("soak", soak_tables)):
        d = load(a.results / f"{name}.json")
        if d:
            print(f"\n### {name}\n")
            print("\n\n".join(fn(d)))


if __name__ == "__main__":
    main()
