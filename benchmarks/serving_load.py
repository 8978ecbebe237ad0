"""Load benchmark of the recommendation service on loopback.

1. Builds (once, cached under benchmarks/.cache/) a serving snapshot of ``--pins`` synthetic
   pins (default 300,000, all indexed, HNSW M=32 ef_construction=200 ef=200) and the
   PinnerSage medoids of ``--users`` users from a 90-day synthetic window.
2. Starts the real server (``pinnersage serve``, uvicorn) on 127.0.0.1.
3. From a separate process (``benchmarks/loadgen.py``), with a bounded, self-stopping load:
   - baseline: GET /health, the floor on this machine, in the same run;
   - for each retrieval policy (``sampled``, the paper's; ``proportional``), on a fresh server:
     cold: every user's recommendations once, in random order, on an empty medoid cache;
     warm: the same users again once every medoid has been fetched (one ``proportional`` pass,
     which queries every medoid of every user at least the index's ef deep, then passes of the
     phase's own requests until one hits the cache 99% of the time). Medoid lookups per request
     (each one an ANN query on a cache miss) are read from every worker's counters;
   - with 10% event posts (each fsynced before its answer) among warm reads;
   - the same, one process running an experiment whose one arm is ``sampled`` (every answer
     assigned and written to the impression log): its cost against the plain ``sampled`` server;
   - the server stack: /health and warm ``sampled`` on 2,000 users under uvicorn with uvloop (what
     ``pinnersage serve`` runs), uvicorn with asyncio's own loop, and granian when it is installed.
4. Writes ``benchmarks/results/serving.md`` and ``serving.json``, with the goals met or missed.

Run: ``make bench-serving`` (or ``.venv/bin/python benchmarks/serving_load.py``).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_io

from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.core.hnsw import build_index, publish_index
from pinnersage_dagster.core.synthetic import (
    UNKNOWN_PIN_ID,
    SyntheticWorld,
    generate_day_actions,
    generate_pins,
)
from pinnersage_dagster.core.user_pass import represent_history
from pinnersage_dagster.serving.catalog import ArrayCatalog
from pinnersage_dagster.serving.snapshot import FORMAT_VERSION, publish_snapshot

DAY = date(2026, 6, 30)
PARTITION = DAY.isoformat()
ALPHA = PinnerSageParams().alpha
POLICIES = ("sampled", "proportional")


def build_snapshot(root: Path, n_pins: int, n_users: int, seed: int) -> dict:
    """The snapshot of one synthetic day: what `serving_snapshot` publishes, without the warehouse."""
    world = SyntheticWorld(n_pins=n_pins, n_users=n_users, seed=seed, dirty_share=0.0)
    pins = generate_pins(world)
    actions = pd.concat([generate_day_actions(world, DAY - timedelta(days=i)) for i in range(90)], ignore_index=True)
    actions = actions[actions.pin_id != UNKNOWN_PIN_ID].drop_duplicates()
    actions = actions.sort_values(["user_id", "ts"], ascending=[True, False]).groupby("user_id").head(1000)
    order = np.argsort(pins.pin_id)
    ids, x = pins.pin_id[order], pins.embedding[order]
    rows = represent_history(actions, ids, x, alpha=ALPHA, decay_lambda=0.01, now=pd.Timestamp(DAY + timedelta(days=1)))
    members = rows[["user_id", "cluster_id", "pin_id"]]
    medoids = rows.drop_duplicates(["user_id", "cluster_id"])[
        ["user_id", "cluster_id", "medoid_pin_id", "importance", "size", "n_actions", "kind"]
    ].reset_index(drop=True)
    started = time.perf_counter()
    index_dir = root / "pin_index" / PARTITION
    index_dir.mkdir(parents=True, exist_ok=True)
    publish_index(
        index_dir,
        build_index(x, M=32, ef_construction=200, ef=200),
        ids,
        source_partition=PARTITION,
        M=32,
        ef_construction=200,
        ef=200,
    )
    index_seconds = time.perf_counter() - started
    popular = actions.pin_id.value_counts().index.to_numpy()[:400]
    publish_snapshot(
        root / "serving" / PARTITION,
        partition=PARTITION,
        batch_time=pd.Timestamp(DAY + timedelta(days=1)),
        medoids=medoids,
        members=members,
        actions=actions[["user_id", "pin_id", "ts"]],
        popular=popular,
        catalog=ArrayCatalog(ids, x),
        index_dir=index_dir,
        alpha=ALPHA,
        decay_lambda=0.01,
    )
    return {
        "pins": n_pins,
        "users": int(medoids.user_id.nunique()),
        "clusters": len(medoids),
        "index_build_seconds": round(index_seconds, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, timeout: float = 300.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                health = json.loads(response.read())
                if health["status"] == "ok":
                    return health
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def load(
    port: int,
    users: list[int],
    connections: int,
    max_seconds: float,
    path: str | None = None,
    post_every: int = 0,
    pins: int = 0,
) -> dict:
    users_file = ROOT / "benchmarks" / ".cache" / "users.txt"
    users_file.write_text("\n".join(map(str, users)))
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "loadgen.py"),
        "--port",
        str(port),
        "--users-file",
        str(users_file),
        "--connections",
        str(connections),
        "--max-seconds",
        str(max_seconds),
    ]
    if path:
        command += ["--path", path]
    if post_every:  # synthetic pin ids are 100,000 + 0 .. n_pins - 1
        command += ["--post-every", str(post_every), "--pin-range", f"100000:{100_000 + pins}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=max_seconds + 60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measured(
    port: int,
    users: list[int],
    args: argparse.Namespace,
    path: str | None = None,
    post_every: int = 0,
    workers: int = 1,
    max_seconds: float | None = None,
) -> dict:
    """One load phase with the medoid-cache hit rate and lookups per request measured over that
    phase only, summed over every worker."""
    before = cache_counts(port, workers)
    result = load(port, users, args.connections, max_seconds or args.max_seconds, path, post_every, args.pins)
    after = cache_counts(port, workers)
    hits, misses = after[0] - before[0], after[1] - before[1]
    result["cache_hit_rate"] = round(hits / (hits + misses), 3) if hits + misses else None
    result["medoid_lookups_per_request"] = round((hits + misses) / max(result["requests"], 1), 2)
    return result


def cache_counts(port: int, workers: int) -> tuple[int, int]:
    """(hits, misses) of the medoid caches of every worker. /health answers for the worker that
    accepted the connection, and one connection after another can land on the same worker every
    time: connections are opened 16 at once, so that every worker accepts some."""
    seen: dict[int, dict] = {}
    for _ in range(50):
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        try:
            for connection in connections:
                connection.connect()
            for connection in connections:
                connection.request("GET", "/health")
            for connection in connections:
                answer = json.loads(connection.getresponse().read())
                seen[answer["pid"]] = answer
        finally:
            for connection in connections:
                connection.close()
        if len(seen) == workers:
            return sum(h["cache_hits"] for h in seen.values()), sum(h["cache_misses"] for h in seen.values())
    raise RuntimeError(f"only {len(seen)} of {workers} workers answered /health")


def warm_up(port: int, users: list[int], args: argparse.Namespace, path: str, workers: int, rng) -> int:
    """Fetch every medoid of every user into every worker's cache; returns the passes made.

    One ``proportional`` pass queries every medoid (up to 40 per user) at least ef deep, which
    serves every ``sampled`` request of the same medoid; passes of the phase's own requests then
    fill what that missed (with several workers, each has its own cache) until one pass hits the
    cache at least 99% of the time."""
    proportional = "/v1/users/{user}/recommendations?policy=proportional"
    for _ in range(workers):
        load(port, rng.permutation(users).tolist(), args.connections, 900, proportional)
    passes = 0
    for passes in range(1, args.warmup_passes + 1):
        phase = measured(port, rng.permutation(users).tolist(), args, path, workers=workers, max_seconds=900)
        if (phase["cache_hit_rate"] or 0) >= 0.99:
            break
    return workers + passes


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pins", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per phase (users asked)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=90.0, help="each phase stops by itself after this")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--warmup-passes", type=int, default=4, help="at most this many passes of a phase's requests to warm its cache"
    )
    parser.add_argument("--stack-users", type=int, default=2_000, help="users of the server-stack comparison")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite serving.md from serving.json, measure nothing"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((ROOT / "benchmarks" / "results" / "serving.json").read_text())
        return report(saved["snapshot"], saved["phases"], args, saved.get("stacks"))

    cache = ROOT / "benchmarks" / ".cache" / f"serving-v{FORMAT_VERSION}-{args.pins}-{args.users}-{args.seed}"
    built = cache / "built.json"
    if not built.exists():
        print(f"building a {args.pins:,}-pin snapshot (once; cached in {cache.relative_to(ROOT)})", flush=True)
        built.parent.mkdir(parents=True, exist_ok=True)
        built.write_text(json.dumps(build_snapshot(cache, args.pins, args.users, args.seed)))
    info = json.loads(built.read_text())

    env = {
        **os.environ,
        "PINNERSAGE_SERVING_ROOT": str(cache / "serving"),
        "PINNERSAGE_EVENTS_ROOT": str(cache / "events"),
    }
    rng = np.random.default_rng(args.seed)
    users = rng.permutation(np.arange(1, args.users + 1))[: args.requests].tolist()
    phases: dict[str, dict] = {}
    # an experiment whose one arm is the sampled policy: against "1 worker, sampled", what running an
    # experiment costs (assignment, the impression id, the impression log) for the same retrieval work
    experiment = cache / "experiment.yaml"
    experiment.write_text("name: bench\nsalt: bench\narms: {sampled: 1}\n")
    env["PINNERSAGE_IMPRESSIONS_ROOT"] = str(cache / "impressions")
    # (workers, policy, with a mixed phase, under the experiment): one process per policy, then two
    # workers behind one port, then one process running the experiment
    for workers, policy, mixed, under in (
        (1, "sampled", True, False),
        (1, "proportional", False, False),
        (2, "sampled", True, False),
        (1, "sampled", False, True),
    ):
        shutil.rmtree(cache / "events", ignore_errors=True)  # each server starts with an empty event log
        shutil.rmtree(cache / "impressions", ignore_errors=True)
        port = free_port()
        server = start(
            [
                "-m",
                "pinnersage_dagster.cli",
                "serve",
                "--port",
                str(port),
                "--refresh-seconds",
                "3600",
                "--workers",
                str(workers),
                *(["--experiment", str(experiment)] if under else []),
            ],
            env,
        )
        label = f"{workers} worker{'s' if workers > 1 else ''}, {policy}" + (", experiment" if under else "")
        try:
            wait_ready(port)
            time.sleep(3 if workers > 1 else 0)  # every worker up, not just the first
            phases[f"{label}: baseline GET /health"] = load(port, users, args.connections, args.max_seconds, "/health")
            # under the experiment the arm decides (a named policy would take the request out of it)
            path = "/v1/users/{user}/recommendations" + ("" if under else "?policy=" + policy)
            phases[f"{label}: cold cache"] = measured(port, users, args, path, workers=workers)
            passes = warm_up(port, users, args, path, workers, rng)
            phases[f"{label}: warm cache"] = measured(
                port, rng.permutation(users).tolist(), args, path, workers=workers
            )
            phases[f"{label}: warm cache"]["warm_up_passes"] = passes
            if mixed:  # 10% event posts (each fsynced before its answer) among the reads
                phases[f"{label}: warm, 10% event posts"] = measured(
                    port, rng.permutation(users).tolist(), args, path, post_every=10, workers=workers
                )
        finally:
            stop(server)
    stacks = stack_phases(cache, env, users[: args.stack_users], args, rng)
    report(info, phases, args, stacks)


def start(arguments: list[str], env: dict) -> subprocess.Popen:
    """A server process; its access log is discarded, its errors kept in benchmarks/.cache/server.log."""
    with open(ROOT / "benchmarks" / ".cache" / "server.log", "ab") as errors:
        return subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def stack_phases(cache: Path, env: dict, users: list[int], args: argparse.Namespace, rng) -> dict:
    """/health and warm ``sampled`` on ``users`` (asked 10 times each) under each server stack,
    one worker: does another loop or server raise the floor, and does a recommendation follow?"""
    from pinnersage_dagster.serving.app import HANDOVER
    from pinnersage_dagster.serving.settings import ServiceSettings

    settings = ServiceSettings(serving_root=str(cache / "serving"), events_root=None, refresh_seconds=3600)
    env = {**env, HANDOVER: settings.model_dump_json()}
    uvicorn = (
        "import sys, uvicorn; from pinnersage_dagster.serving.app import worker_app; "
        "from pinnersage_dagster.serving.server import uvicorn_options; "
        "from pinnersage_dagster.serving.settings import ServiceSettings; "
        "uvicorn.run(worker_app(), host='127.0.0.1', port=int(sys.argv[1]), loop=sys.argv[2], log_level='info', "
        "**uvicorn_options(ServiceSettings(events_root=None).limits))"  # logs as `pinnersage serve` does
    )
    stacks = {
        "uvicorn + httptools + uvloop (pinnersage serve)": lambda port: ["-c", uvicorn, str(port), "uvloop"],
        "uvicorn + httptools + asyncio loop": lambda port: ["-c", uvicorn, str(port), "asyncio"],
    }
    try:
        granian = importlib.metadata.version("granian")
        stacks[f"granian {granian} (not a dependency; installed for this measurement)"] = lambda port: [
            "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--no-ws", "--log-level", "warning", "pinnersage_dagster.serving.app:worker_app",
        ]  # fmt: skip
    except importlib.metadata.PackageNotFoundError:
        pass
    repeated = [user for _ in range(10) for user in users]
    path = "/v1/users/{user}/recommendations?policy=sampled"
    out: dict[str, dict] = {}
    for name, command in stacks.items():
        port = free_port()
        server = start(command(port), env)
        try:
            wait_ready(port)
            floor = load(port, repeated, args.connections, args.max_seconds, "/health")
            load(port, users, args.connections, 900, "/v1/users/{user}/recommendations?policy=proportional")
            load(port, users, args.connections, 900, path)
            warm = load(port, rng.permutation(repeated).tolist(), args.connections, args.max_seconds, path)
            out[name] = {"health": floor, "warm_sampled": warm}
        finally:
            stop(server)
    return out


def ratio(phases: dict, name: str) -> float:
    """A phase's req/s over its own server's /health req/s (same server, same run)."""
    return (
        phases[name]["requests_per_second"]
        / phases[name.split(":")[0] + ": baseline GET /health"]["requests_per_second"]
    )


# phase: (ratio to the same server's /health req/s at least, p99 at most this many times /health's p99)
GOALS = {
    "1 worker, sampled: warm cache": (0.70, 2.0),
    "2 workers, sampled: warm cache": (0.70, 2.0),
    "1 worker, proportional: warm cache": (0.60, None),
    "1 worker, sampled: cold cache": (0.30, None),
    "2 workers, sampled: cold cache": (0.30, None),
    "1 worker, proportional: cold cache": (0.30, None),
}


def goal_lines(phases: dict) -> list[str]:
    """Each goal met or missed, against the same server's /health in the same run."""
    lines = ["Goals (ratios to the same server's `GET /health`, same run):", ""]
    for name, (at_least, p99_times) in GOALS.items():
        p = phases.get(name)
        if p is None:
            continue
        floor = phases[name.split(":")[0] + ": baseline GET /health"]
        r = ratio(phases, name)
        met = r >= at_least and (p99_times is None or p["p99_ms"] <= p99_times * floor["p99_ms"])
        goal = f">= {at_least:.2f}x req/s" + (f", p99 <= {p99_times:g}x /health's" if p99_times else "")
        p99 = f", p99 {p['p99_ms']} ms against {floor['p99_ms']} ms" if p99_times else ""
        lines.append(
            f"- {name}: {goal}: **{'met' if met else 'missed'}** ({r:.2f}x: {p['requests_per_second']:,} against "
            f"{floor['requests_per_second']:,} req/s{p99})."
        )
    return lines


def cost_lines(phases: dict) -> list[str]:
    """What an experiment and event posts cost against the plain warm phase (ratios to each server's floor)."""
    lines = []
    plain, under = "1 worker, sampled: warm cache", "1 worker, sampled, experiment: warm cache"
    if plain in phases and under in phases:
        lines.append(
            f"- An experiment (every answer assigned and written to the impression log; its one arm is `sampled`): "
            f"{ratio(phases, under):.2f}x its server's /health against {ratio(phases, plain):.2f}x without one, "
            f"so **{ratio(phases, under) / ratio(phases, plain):.2f}x** the warm throughput relative to the floor "
            f"(p99 {phases[under]['p99_ms']} against {phases[plain]['p99_ms']} ms)."
        )
    for workers in ("1 worker", "2 workers"):
        warm, mixed = f"{workers}, sampled: warm cache", f"{workers}, sampled: warm, 10% event posts"
        if warm in phases and mixed in phases:
            lines.append(
                f"- {workers}, 10% event posts (each fsynced before its answer): {ratio(phases, mixed):.2f}x against "
                f"{ratio(phases, warm):.2f}x for reads alone, so **{ratio(phases, mixed) / ratio(phases, warm):.2f}x**; "
                f"posts p99 {phases[mixed]['post_p99_ms']} ms, every request's p99 {phases[mixed]['p99_ms']} ms."
            )
    return ["Costs against the plain warm phase:", "", *lines] if lines else []


def stack_lines(stacks: dict) -> list[str]:
    if not stacks:
        return []
    lines = [
        "Server stack (1 worker; /health, then warm `sampled` on the same users after a warm-up; same run):",
        "",
        "| server | /health req/s | /health p99 ms | warm sampled req/s | warm p99 ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in stacks.items():
        floor, warm = p["health"], p["warm_sampled"]
        lines.append(
            f"| {name} | {floor['requests_per_second']:,} | {floor['p99_ms']} | {warm['requests_per_second']:,} | "
            f"{warm['p99_ms']} | {warm['requests_per_second'] / floor['requests_per_second']:.2f} |"
        )
    return lines


def report(info: dict, phases: dict, args: argparse.Namespace, stacks: dict | None = None) -> None:
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    command = (
        f"make bench-serving  # = .venv/bin/python benchmarks/serving_load.py --pins {args.pins} "
        f"--users {args.users} --requests {args.requests} --connections {args.connections}"
    )
    saved = out / "serving.json"
    where = (
        json.loads(saved.read_text()).get("machine") if args.report_only and saved.exists() else results_io.machine()
    )
    stacks = stacks or {}
    saved.write_text(
        json.dumps(
            {"snapshot": info, "phases": phases, "stacks": stacks, "command": command, "machine": where}, indent=2
        )
    )
    lines = [
        "# Recommendation service under load",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {where}; server and load generator share it (uvicorn with 1 or 2 worker processes, one load "
        "process).",
        f"Snapshot: {info['pins']:,} pins in the HNSW index (M=32, ef=200), {info['users']:,} users, "
        f"{info['clusters']:,} clusters (built in {info['index_build_seconds']} s).",
        "Each request: spend the budget of 400 across the user's medoids (`sampled`: up to 3 drawn by importance, "
        "floor(400/e) neighbours each; `proportional`: every medoid, a share by importance, floor 10, cap 200), "
        "exclude seen pins, merge, JSON with up to 400 items. Cold: first sight of every user on an empty medoid "
        "cache. Warm: every medoid fetched once (warm-up passes in the last column), then every user again.",
        "The floor, `GET /health`, is a plain `def` handler (FastAPI runs it in its thread pool) whose answer is "
        "validated against its response model; a recommendation is an `async` handler that sends encoded bytes.",
        "",
        "| phase | requests | errors | req/s | p50 ms | p90 ms | p99 ms | ratio to the same server's /health req/s "
        "| cache hit rate in phase | medoid lookups per request | event posts p99 ms | warm-up passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in phases.items():
        lines.append(
            f"| {name} | {p['requests']} | {p['errors']} | {p['requests_per_second']} | {p['p50_ms']} | {p['p90_ms']} | "
            f"{p['p99_ms']} | {ratio(phases, name):.2f} | {p.get('cache_hit_rate', '')} | "
            f"{p.get('medoid_lookups_per_request', '')} | {p.get('post_p99_ms') or ''} | {p.get('warm_up_passes', '')} |"
        )
    lines += ["", *goal_lines(phases), "", *cost_lines(phases), "", *stack_lines(stacks)]
    lines += [
        "",
        f"Connections: {args.connections}; each phase stops after {args.requests} requests or "
        f"{args.max_seconds:.0f} s, whichever comes first.",
    ]
    (out / "serving.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
