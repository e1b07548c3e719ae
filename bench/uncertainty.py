"""What the uncertainty map and identity ranking cost, through the HTTP app (in-process, one
client, sequential requests), against /samples at the same n. Prints a table and writes
bench/results/uncertainty.json.

    python -m bench.uncertainty [--models models] [--scale 8] [--n 10 32] [--pause-training]

Rows, per n: /samples?n, /samples?n&uncertainty=true, /superresolve?uncertainty=true&n, and
(with the identity extra) /samples?n with identity_reference; plain /superresolve once.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

from bench.common import ROOT, machine, md_table, timeit, training_paused


def astronaut(scale: int) -> tuple[bytes, bytes]:
    """(LR face PNG, HR face PNG) from scikit-image's astronaut."""
    from PIL import Image
    from skimage import data

    from facesr_core.degradation import degrade, to_hr

    hr = to_hr(Image.fromarray(data.astronaut()[25:205, 150:330]))
    out = []
    for img in (degrade(hr, scale), hr):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "models",
                   help="model folder the app serves, FACESR_MODEL_DIR (default: this "
                        "checkout's models/)")
    p.add_argument("--scale", type=int, default=8,
                   help="the LR face is the astronaut degraded by this factor, so the model of "
                        "that scale answers (default 8)")
    p.add_argument("--n", type=int, nargs="+", default=[10, 32],
                   help="samples per request, one set of rows each (default 10 32)")
    p.add_argument("--min-s", type=float, default=8.0, help="timed seconds per row (at least)")
    p.add_argument("--pause-training", action="store_true",
                   help="SIGSTOP a background facesr-train while timing (bench/common.py)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "uncertainty.json",
                   help="write the rows as JSON here (default bench/results/uncertainty.json)")
    a = p.parse_args()

    from fastapi.testclient import TestClient

    from facesr_core import identity
    from service.app import create_app
    from service.settings import Settings

    lr, hr = astronaut(a.scale)
    settings = Settings(model_dir=a.models, max_samples=max(a.n), request_timeout_s=120)
    image = {"image": ("lr.png", lr, "image/png")}
    with_ref = {**image, "identity_reference": ("ref.png", hr, "image/png")}
    rows = [("/superresolve", "/superresolve", image, None)]
    for n in a.n:
        rows += [(f"/samples?n={n}", f"/samples?n={n}&seed=1", image, n),
                 (f"/samples?n={n}&uncertainty=true", f"/samples?n={n}&seed=1&uncertainty=true",
                  image, n),
                 (f"/superresolve?uncertainty=true&n={n}",
                  f"/superresolve?uncertainty=true&n={n}&seed=1", image, n)]
        if identity.available():
            rows.append((f"/samples?n={n} + identity_reference", f"/samples?n={n}&seed=1",
                         with_ref, n))
    results = []
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        results = timed_rows(client, rows, a.min_s, a.pause_training)
    base = {r["n"]: r["p50_ms"] for r in results if r["request"] == f"/samples?n={r['n']}"}
    table = [[r["request"], r["reps"], r["p50_ms"],
              r["p50_ms"] / base[r["n"]] if r["n"] else float("nan")] for r in results]
    print(md_table(["request", "reps", "p50 ms", "x /samples at the same n"], table))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine(), "scale": a.scale,
                                 "precision": "FACESR_PRECISION=auto", "rows": results},
                                indent=1))


def wait_ready(client, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"the app was not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def timed_rows(client, rows: list, min_s: float, pause_training: bool) -> list[dict]:
    """Median seconds of each row's request, called sequentially."""
    results = []
    with training_paused(pause_training):
        for label, url, files, n in rows:
            def call(url: str = url, files: dict = files) -> None:
                client.post(url, files=files).raise_for_status()

            times = timeit(call, min_reps=5, min_s=min_s)
            results.append({"request": label, "n": n, "reps": len(times),
                            "p50_ms": 1000 * statistics.median(times)})
            print(f"{label}: {results[-1]['p50_ms']:.0f} ms ({len(times)} reps)", flush=True)
    return results


if __name__ == "__main__":
    main()
