"""Capacity on paper: replicas, cores and GPUs for a face rate at a p99 target, from a measured
per-replica throughput (BENCHMARKS.md, "Capacity and cost").

    python -m bench.capacity                                   # the measured CPU figures
    python -m bench.capacity --mu 20.7 --cores 2 --rates 100 1000 10000 --p99 0.5 1

The model: each replica is a single FIFO server of rate mu (images/s at saturation, measured)
fed with Poisson arrivals. For M/M/1 the response time is exponential with rate mu - lambda, so
p99 = ln(100) / (mu - lambda) and one replica may take at most lambda_max = mu - ln(100) / p99.
Exponential service times are a pessimistic stand-in for the near-constant time of one image,
and a least-connections balancer over N replicas queues less than N separate queues, so the
counts are upper bounds. Replicas N = ceil(rate / lambda_max), plus one so that losing a replica
(a node, a rollout) keeps the target. Cost: N + 1 replicas of `--cores` cores (or one GPU each),
so core-hours (GPU-hours) per million faces = (N + 1) * cores / (3600 * rate) * 1e6; multiply by
your price per core-hour.
"""

from __future__ import annotations

import argparse
import math
import sys

from bench.common import md_table

# Measured (BENCHMARKS.md): one replica, 2 vCPU, /superresolve at saturation, paper-size x8 fp32,
# machine A: 20.7 images/s (16 clients). int8 x8 took 2.09x fp32's requests/s at 16 clients,
# measured side by side on another AVX512-VNNI machine (20.1 against 9.63).
INT8_OVER_FP32 = 20.1 / 9.63
MEASURED = {"fp32, 2 vCPU (measured, machine A)": 20.7,
            f"int8 x8, 2 vCPU (fp32 x {INT8_OVER_FP32:.2f}, derived)": 20.7 * INT8_OVER_FP32}


def per_replica_limit(mu: float, p99_s: float) -> float:
    """Highest arrival rate one M/M/1 replica of rate mu takes with its p99 within p99_s."""
    return mu - math.log(100) / p99_s


def replicas_for(rate: float, mu: float, p99_s: float) -> int:
    limit = per_replica_limit(mu, p99_s)
    if limit <= 0:
        raise ValueError(f"p99 {p99_s} s is below what one replica of {mu}/s can give at any load")
    return math.ceil(rate / limit)


def table(mus: dict[str, float], rates: list[float], p99s: list[float], cores: int) -> str:
    rows = []
    for label, mu in mus.items():
        for p99 in p99s:
            for rate in rates:
                n = replicas_for(rate, mu, p99)
                core_hours = (n + 1) * cores / (3600 * rate) * 1e6
                rows.append([label, f"{p99:g} s", f"{rate:,.0f}",
                             f"{per_replica_limit(mu, p99):.1f}", n, n + 1, (n + 1) * cores,
                             f"{core_hours:.1f}"])
    return md_table(["replica", "p99 target", "faces/s", "faces/s per replica", "replicas",
                     "with one spare", "cores", "core-hours per 1M faces"],
                    rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mu", type=float, nargs="*",
                   help="per-replica throughput(s) at saturation, images/s (default: measured)")
    p.add_argument("--cores", type=int, default=2, help="cores per replica (default 2)")
    p.add_argument("--rates", type=float, nargs="+", default=[100, 1000, 10000],
                   help="face rates to size for, faces/s (default 100 1000 10000)")
    p.add_argument("--p99", type=float, nargs="+", default=[0.5, 1.0], help="seconds")
    args = p.parse_args(argv)
    mus = {f"{mu:g} images/s": mu for mu in args.mu} if args.mu else MEASURED
    print(table(mus, args.rates, args.p99, args.cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
