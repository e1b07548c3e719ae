"""Three FaceSR replicas behind a real load balancer, on this machine, under a bounded load.

    python -m bench.replicas                       # the shipped models/, 6 clients, ~2 minutes
    python -m bench.replicas --pause-training --json bench/results/replicas.json

It starts three `python -m service` processes on 127.0.0.1:8101-8103, Debian's HAProxy with
deploy/replicas/haproxy.cfg on 127.0.0.1:8100 (health checks on /health/ready, retries on
another replica) and Debian's Prometheus with deploy/replicas/prometheus.yml on 127.0.0.1:9191,
then, with `--clients` closed-loop clients posting the 16 px face of examples/ to HAProxy:

1. steady: each replica's share of the requests, from its own /metrics (the spread);
   once the load stops, the replicas' counters add up to the 200s the clients got, and
   Prometheus's sum over the three targets says the same;
2. kill: SIGKILL one replica mid-load: no request may fail, and the other two serve more;
3. warming: start it again under load: while it is live but not yet ready, it serves nothing,
   then it takes its share;
4. drain: SIGTERM another replica mid-load: it exits cleanly and no request fails.

Every check prints PASS or FAIL; the exit status is 1 if any failed. Needs `apt-get install
haproxy prometheus` (Debian 12), the .venv of the README, and the ports above free.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import ROOT, CpuProbe, machine, md_table, training_paused
from bench.server import ServiceProcess

HAPROXY_CFG = ROOT / "deploy/replicas/haproxy.cfg"
PROMETHEUS_CFG = ROOT / "deploy/replicas/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/facesr.json"
LB = "http://127.0.0.1:8100"
PROM = "http://127.0.0.1:9191"
FACE = ROOT / "examples/lr16.png"
INFERENCE = '/superresolve'


def replica_ports() -> dict[str, int]:
    """Server name -> port, read from the HAProxy config (the one place they are written)."""
    return {name: int(port) for name, port in
            re.findall(r"^\s*server (\w+) 127\.0\.0\.1:(\d+)", HAPROXY_CFG.read_text(), re.M)}


# --- processes -----------------------------------------------------------------------------------

def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start cmd with its output in log (the child keeps its own copy of the file)."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log_dir: Path
    server: ServiceProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.server = ServiceProcess({**os.environ, **self.env, "FACESR_PORT": str(self.port)},
                                     self.port,
                                     self.log_dir / f"{self.name}.{self.starts}.log")

    @property
    def proc(self) -> subprocess.Popen:
        assert self.server is not None
        return self.server.proc

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(45)


def status_of(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def served_count(replica: Replica) -> int:
    """200s of the inference endpoint, from the replica's own /metrics."""
    with urllib.request.urlopen(f"{replica.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    pattern = (r'^facesr_requests_total\{endpoint="' + re.escape(INFERENCE)
               + r'",status="200"\} ([0-9.e+]+)$')
    return sum(int(float(v)) for v in re.findall(pattern, text, re.M))


def haproxy_stats(sock: Path) -> dict[str, dict[str, str]]:
    """`show stat` of the facesr backend and its servers, by server name ('BACKEND' too)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {r["svname"]: r for r in rows if r["pxname"] == "facesr" and r["svname"] != "FRONTEND"}


def wait_for(predicate, timeout: float, what: str, step: float = 0.2) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def prom_query(expr: str) -> list[dict]:
    url = f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["data"]["result"]


# --- load ----------------------------------------------------------------------------------------

@dataclass
class Load:
    """Closed-loop clients posting one face to the balancer until stopped; every answer kept."""

    clients: int
    # (start, end, HTTP status or 0 for a transport error, the replica named by X-Served-By)
    results: list[tuple[float, float, int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, http: httpx.AsyncClient, body: bytes) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = await http.post(f"{LB}{INFERENCE}", files={"image": ("lr16.png", body)})
                self.results.append((t0, time.monotonic(), r.status_code,
                                     r.headers.get("x-served-by", "?")))
            except httpx.HTTPError as exc:
                self.results.append((t0, time.monotonic(), 0, "?"))
                self.errors.append(f"{type(exc).__name__}: {exc}")

    async def run(self) -> None:
        body = FACE.read_bytes()
        async with httpx.AsyncClient(timeout=45.0) as http:
            await asyncio.gather(*(self._client(http, body) for _ in range(self.clients)))

    def stop(self) -> None:
        self._stop.set()

    def window(self, t0: float, t1: float) -> list[tuple[float, float, int, str]]:
        """Requests that ended in [t0, t1)."""
        return [r for r in self.results if t0 <= r[1] < t1]


async def during_load(clients: int, steps) -> Load:
    """Run the load while `steps(load)` (a blocking function) runs in a thread; then stop it."""
    load = Load(clients)
    task = asyncio.create_task(load.run())
    try:
        await asyncio.to_thread(steps, load)
    finally:
        load.stop()
        await task
    return load


# --- the run -------------------------------------------------------------------------------------

class Checks:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def __call__(self, name: str, ok: bool, detail: str) -> None:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {detail}", flush=True)

    @property
    def failed(self) -> int:
        return sum(not c["ok"] for c in self.items)


def rate(rows, t0: float, t1: float, server: str | None = None) -> float:
    n = sum(1 for r in rows if r[2] == 200 and (server is None or r[3] == server)
            and t0 <= r[1] < t1)
    return n / max(t1 - t0, 1e-9)


def not_ok(rows) -> list:
    return [r for r in rows if r[2] != 200]


def run(args: argparse.Namespace, work: Path) -> dict:
    for tool in ("haproxy", "prometheus"):
        if not shutil.which(tool):
            raise SystemExit(f"replicas: no {tool}: apt-get install haproxy prometheus")
    ports = replica_ports()
    for port in (*ports.values(), 8100, 9191):
        if status_of(f"http://127.0.0.1:{port}/", timeout=0.5) is not None:
            raise SystemExit(f"replicas: port {port} is taken; stop what listens there")
    env = {"FACESR_MODEL_DIR": str(args.model_dir), "FACESR_HOST": "127.0.0.1",
           "FACESR_PROVIDERS": "cpu", "FACESR_INTRA_OP_THREADS": str(args.threads),
           "FACESR_LOG_LEVEL": "warning", "ORT_DISABLE_TELEMETRY": "1"}
    replicas = {name: Replica(name, port, env, work) for name, port in ports.items()}
    sock = work / "haproxy.sock"
    procs: list[subprocess.Popen] = []
    check = Checks()
    out: dict = {"clients": args.clients, "model_dir": str(args.model_dir),
                 "intra_op_threads": args.threads, "phase_s": args.phase_s}
    try:
        t_start = time.monotonic()
        for r in replicas.values():
            r.start()
        procs.append(spawn(["haproxy", "-db", "-f", str(args.haproxy_config)], work / "haproxy.log",
                           {"HAPROXY_STATS_SOCKET": str(sock)}))
        procs.append(spawn(["prometheus", f"--config.file={PROMETHEUS_CFG}",
                            f"--storage.tsdb.path={work}/tsdb",
                            "--web.listen-address=127.0.0.1:9191", "--log.level=warn"],
                           work / "prometheus.log"))
        wait_for(lambda: all(status_of(f"{r.url}/health/ready") == 200
                             for r in replicas.values()), 300, "three ready replicas")
        out["ready_s"] = time.monotonic() - t_start
        wait_for(lambda: sock.exists() and all(
            haproxy_stats(sock)[n]["status"] == "UP" for n in replicas), 30, "HAProxy: all UP")
        print(f"3 replicas ready in {out['ready_s']:.1f} s; HAProxy sees them UP", flush=True)

        with training_paused(args.pause_training, max_s=args.phase_s * 4 + 120) as paused:
            probe = CpuProbe()
            steady(args, replicas, check, out)
            metrics_add_up(replicas, check, out)
            names = list(replicas)
            kill_then_warm(args, replicas[names[2]], replicas, sock, check, out)
            drain(args, replicas[names[1]], replicas, check, out)
            out["foreign_cpu_pct"] = probe.pct()
        out["training_paused"] = paused
        stats = haproxy_stats(sock)["BACKEND"]
        out["haproxy_backend"] = {k: stats.get(k) for k in ("stot", "wretr", "wredis", "eresp",
                                                              "econ", "hrsp_5xx")}
        print(f"HAProxy backend: {out['haproxy_backend']}")
    finally:
        for r in replicas.values():
            r.stop()
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
    out["checks"] = check.items
    out["failed"] = check.failed
    return out


def steady(args, replicas: dict[str, Replica], check: Checks, out: dict) -> None:
    """All three up: how the requests spread, from each replica's own counter."""
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    marks: dict[str, float] = {}

    def steps(load: Load) -> None:
        time.sleep(args.warm_s)
        before.update({n: served_count(r) for n, r in replicas.items()})
        marks["t0"] = time.monotonic()
        time.sleep(args.phase_s)
        marks["t1"] = time.monotonic()
        after.update({n: served_count(r) for n, r in replicas.items()})

    load = asyncio.run(during_load(args.clients, steps))
    counts = {n: after[n] - before[n] for n in replicas}
    mean = sum(counts.values()) / len(counts)
    worst = max(abs(c - mean) / mean for c in counts.values()) if mean else 1.0
    rows = load.window(marks["t0"], marks["t1"])
    ok_rows = [r for r in rows if r[2] == 200]
    latencies = sorted(1000 * (r[1] - r[0]) for r in ok_rows)
    pct = lambda q: latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]  # noqa: E731
    out["steady"] = {"per_replica": counts, "worst_deviation_from_mean": worst,
                     "seconds": marks["t1"] - marks["t0"],
                     "req_per_s": len(ok_rows) / (marks["t1"] - marks["t0"]),
                     "p50_ms": pct(50), "p99_ms": pct(99), "not_200": len(not_ok(load.results))}
    check("spread", mean > 0 and worst <= 0.20,
          f"per-replica 200s in {args.phase_s:.0f} s {counts}: worst {worst:.1%} from the mean "
          "(limit 20%)")
    check("steady: every request answered 200", not not_ok(load.results),
          f"{len(load.results)} requests, {len(not_ok(load.results))} not 200")
    out["steady"]["client_total_200"] = sum(1 for r in load.results if r[2] == 200)


def metrics_add_up(replicas: dict[str, Replica], check: Checks, out: dict) -> None:
    """After the load: every 200 the clients got is counted by exactly one replica, and
    Prometheus's sum over the three targets is the same number."""
    direct = {n: served_count(r) for n, r in replicas.items()}
    clients = out["steady"]["client_total_200"]
    check("replica counters add up to the clients' 200s", sum(direct.values()) == clients,
          f"sum of /metrics {sum(direct.values())} = {' + '.join(map(str, direct.values()))}, "
          f"clients got {clients}")
    query = f'sum(facesr_requests_total{{endpoint="{INFERENCE}",status="200"}})'

    def prometheus_caught_up() -> bool:
        got = prom_query(query)
        return bool(got) and int(float(got[0]["value"][1])) == sum(direct.values())

    with contextlib.suppress(RuntimeError):
        wait_for(prometheus_caught_up, 20, "Prometheus to scrape the final counts", step=1.0)
    got = prom_query(query)
    summed = int(float(got[0]["value"][1])) if got else None
    up = prom_query('up{job="facesr"}')
    per_instance = prom_query(
        f'sum by (instance) (facesr_requests_total{{endpoint="{INFERENCE}",status="200"}})')
    out["prometheus"] = {"sum": summed, "targets_up": sum(r["value"][1] == "1" for r in up),
                         "per_instance": {r["metric"]["instance"]: int(float(r["value"][1]))
                                          for r in per_instance}}
    check("Prometheus: three targets up, their sum = the replicas' counters",
          out["prometheus"]["targets_up"] == 3 and summed == sum(direct.values())
          and sorted(out["prometheus"]["per_instance"].values()) == sorted(direct.values()),
          f"up: {out['prometheus']['targets_up']}; {query} = {summed}; "
          f"by instance {out['prometheus']['per_instance']}")
    dashboard_per_instance(check, out)


def dashboard_per_instance(check: Checks, out: dict) -> None:
    """Every query of the Grafana dashboard, all instances selected: it evaluates, and each
    panel that splits by instance shows the three replicas."""
    dash = json.loads(DASHBOARD.read_text())
    failed, split = [], {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            try:
                result = prom_query(expr)
            except OSError as exc:
                failed.append(f"{panel['title']}: {exc}")
                continue
            if "by (instance)" in expr:
                split[panel["title"]] = len(result)
    out["dashboard"] = {"failed": failed, "series_per_instance_panel": split}
    check("dashboard: every query evaluates, per-instance panels show 3 replicas",
          not failed and split and all(n == 3 for n in split.values()),
          f"failed {failed}; series in the per-instance panels {split}")


def kill_then_warm(args, victim: Replica, replicas: dict[str, Replica], sock: Path,
                   check: Checks, out: dict) -> None:
    """SIGKILL one replica mid-load; then start it again under the same load."""
    marks: dict[str, float] = {}
    warming: dict = {}
    others = [n for n in replicas if n != victim.name]

    def steps(load: Load) -> None:
        time.sleep(args.warm_s + args.phase_s / 2)
        marks["kill"] = time.monotonic()
        victim.signal(signal.SIGKILL)
        victim.proc.wait()
        marks["down_after_s"] = wait_for(
            lambda: haproxy_stats(sock)[victim.name]["status"].startswith("DOWN"), 30,
            "HAProxy to mark the killed replica DOWN", step=0.1)
        time.sleep(args.phase_s / 2)
        marks["restart"] = time.monotonic()
        victim.start()
        # Live but not ready: the window in which a balancer without health checks would send it
        # traffic. Sampled every 0.1 s; at the first ready answer, read its counter.
        wait_for(lambda: status_of(f"{victim.url}/health/live", 0.5) == 200, 120,
                 "the restarted replica to answer /health/live", step=0.05)
        marks["live"] = time.monotonic()
        states = []
        deadline = time.monotonic() + 300
        while (code := status_of(f"{victim.url}/health/ready", 0.5)) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the restarted replica did not turn ready in 300 s")
            states.append((time.monotonic(), code, haproxy_stats(sock)[victim.name]["status"]))
            time.sleep(0.1)
        marks["ready"] = time.monotonic()
        warming["served_when_ready"] = served_count(victim)
        warming["haproxy_states_while_warming"] = sorted({s for _, _, s in states})
        wait_for(lambda: haproxy_stats(sock)[victim.name]["status"] == "UP", 30,
                 "HAProxy to mark the warm replica UP", step=0.1)
        marks["up"] = time.monotonic()
        time.sleep(args.phase_s / 2)
        marks["end"] = time.monotonic()
        warming["served_at_end"] = served_count(victim)

    load = asyncio.run(during_load(args.clients, steps))
    rows = load.results
    window = args.phase_s / 2
    before = {n: rate(rows, marks["kill"] - window, marks["kill"], n) for n in others}
    after = {n: rate(rows, marks["kill"] + 1, marks["restart"], n) for n in others}
    failed = not_ok(rows)
    out["kill"] = {"victim": victim.name, "requests": len(rows), "not_200": len(failed),
                   "errors": load.errors[:5], "haproxy_down_after_s": marks["down_after_s"],
                   "req_per_s_before": {n: round(v, 2) for n, v in before.items()},
                   "req_per_s_after": {n: round(v, 2) for n, v in after.items()},
                   "total_req_per_s_before": rate(rows, marks["kill"] - window, marks["kill"]),
                   "total_req_per_s_after": rate(rows, marks["kill"] + 1, marks["restart"]),
                   "in_flight_at_kill": sum(1 for r in rows if r[0] < marks["kill"] < r[1])}
    check("kill: no request failed", not failed,
          f"SIGKILL {victim.name} mid-load; {len(rows)} requests, {len(failed)} not 200 "
          f"{load.errors[:3]}; HAProxy marked it DOWN after {marks['down_after_s']:.1f} s")
    # Together, not each: a few seconds hold a dozen requests per replica, too few to rank two.
    check("kill: the others absorb the load", sum(after.values()) > sum(before.values()),
          f"req/s of {' + '.join(others)} before -> after the kill: "
          f"{sum(before.values()):.2f} -> {sum(after.values()):.2f} ("
          + ", ".join(f"{n} {before[n]:.2f} -> {after[n]:.2f}" for n in others)
          + f"); all replicas before: {out['kill']['total_req_per_s_before']:.2f}")
    served_before_up = [r for r in rows if r[3] == victim.name and marks["restart"] <= r[0]
                        and r[1] < marks["up"]]
    out["warming"] = {**warming, "live_to_ready_s": marks["ready"] - marks["live"],
                      "restart_to_ready_s": marks["ready"] - marks["restart"],
                      "ready_to_up_s": marks["up"] - marks["ready"],
                      "served_by_it_before_up": len(served_before_up)}
    check("warming: a replica still warming gets no traffic",
          warming["served_when_ready"] == 0 and not served_before_up
          and warming["served_at_end"] > 0,
          f"live -> ready {out['warming']['live_to_ready_s']:.1f} s under load, HAProxy state "
          f"{warming['haproxy_states_while_warming']}; requests it served by the time it was "
          f"ready: {warming['served_when_ready']}; {warming['served_at_end']} in the "
          f"{window:.0f} s after HAProxy put it UP ({out['warming']['ready_to_up_s']:.1f} s "
          "after ready)")


def drain(args, victim: Replica, replicas: dict[str, Replica], check: Checks, out: dict) -> None:
    """SIGTERM one replica mid-load: it finishes what it holds, exits cleanly, nothing fails."""
    marks: dict[str, float] = {}

    def steps(load: Load) -> None:
        time.sleep(args.warm_s + args.phase_s / 2)
        marks["term"] = time.monotonic()
        victim.signal(signal.SIGTERM)
        marks["exit_code"] = victim.proc.wait(60)
        marks["exited"] = time.monotonic()
        time.sleep(args.phase_s / 2)

    load = asyncio.run(during_load(args.clients, steps))
    rows = load.results
    failed = not_ok(rows)
    finished_after = [r for r in rows if r[3] == victim.name and r[0] < marks["term"] < r[1]]
    out["drain"] = {"victim": victim.name, "requests": len(rows), "not_200": len(failed),
                    "errors": load.errors[:5], "exit_code": marks["exit_code"],
                    "exit_s": marks["exited"] - marks["term"],
                    "in_flight_on_it_completed": len(finished_after)}
    check("drain: SIGTERM mid-load, clean exit, no request failed",
          not failed and marks["exit_code"] in (-15, 143, 0),
          f"{victim.name} exited {marks['exit_code']} {out['drain']['exit_s']:.1f} s after "
          f"SIGTERM, {len(finished_after)} of its requests in flight then answered 200; "
          f"{len(rows)} requests, {len(failed)} not 200 {load.errors[:3]}")


def summary(out: dict) -> str:
    s = out["steady"]
    rows = [[n, c] for n, c in s["per_replica"].items()]
    lines = [md_table(["replica", f"200s in {s['seconds']:.0f} s"], rows),
             f"\nsteady: {s['req_per_s']:.1f} req/s, p50 {s['p50_ms']:.0f} ms, "
             f"p99 {s['p99_ms']:.0f} ms; worst deviation {s['worst_deviation_from_mean']:.1%}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models",
                   help="FACESR_MODEL_DIR of the replicas (default: the shipped models/)")
    p.add_argument("--clients", type=int, default=6, help="closed-loop clients (default 6)")
    p.add_argument("--phase-s", type=float, default=20.0,
                   help="seconds of measured load per phase (default 20)")
    p.add_argument("--warm-s", type=float, default=3.0,
                   help="seconds of unmeasured load before each phase (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="FACESR_INTRA_OP_THREADS per replica (default 1: three replicas share "
                        "the cores)")
    p.add_argument("--haproxy-config", type=Path, default=HAPROXY_CFG,
                   help="HAProxy config (default deploy/replicas/haproxy.cfg; same servers)")
    p.add_argument("--pause-training", action="store_true",
                   help="SIGSTOP the background training job meanwhile (bench/common.py)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep-logs", action="store_true", help="keep the replicas' logs; say where")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="facesr-replicas."))
    try:
        out = {"machine": machine(), **run(args, work)}
    finally:
        if args.keep_logs:
            print(f"logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nreplicas: {len(out['checks']) - out['failed']} passed, {out['failed']} failed")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
