"""Load benchmark of Celery mode: enqueue rate, one worker's completion rate, added latency.

Method. Everything runs on this machine over loopback, each piece in its own process: two mock
OpenAI upstreams (`tests.mocks.openai_server`, one answering at once, one after `--delay-ms`,
1 s by default), a Redis of our own (`redis-server` on a free port, no persistence), a
throwaway PostgreSQL database (`pm_bench_<random>`, migrated with Alembic, always dropped at the
end), the API (`python -m app serve`, WORKERS=2, ENVIRONMENT=production, CELERY_BROKER_URL =
our Redis) and, when a phase needs one, a worker (`python -m app worker`).

1. Enqueue: a closed loop of N aiohttp clients does only `POST /ai/prompts/` (no worker runs,
   so every prompt stays pending and its message waits in Redis): requests/s, p50/p99, errors.
2. Completions: prompts are posted with no worker running, then ONE worker starts
   (WORKER_CONCURRENCY=1000) against the slow mock. Every 100 ms the script counts the rows by
   status and reads the worker's VmRSS and CPU time from /proc. The steady rate is taken between
   10 % and 90 % of the prompts done.
3. Added latency: one client submits prompts one after the other, polling `GET` every 2 ms,
   against the instant mock; first with a worker (Celery mode), then with an API that runs
   prompts itself (no CELERY_BROKER_URL, "embedded" runner), everything else equal.

Between phases the prompt tables are truncated and our Redis is flushed, so no phase sees
another's prompts. All the processes share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import redis

from app.kit.sealing import generate_key
from bench.prompts_load import (
    BIN,
    MOCK_KEY,
    PROMPT,
    ROOT,
    Children,
    Samples,
    cpu_seconds,
    errors_text,
    free_port,
    p50_p99,
    rss_mib,
    run_benchmark,
    run_cmd,
    submit,
    wait_up,
)

RESULTS = ROOT / "bench" / "results" / "celery_load.md"
PACKAGES = ("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "celery", "kombu", "redis", "aiohttp")
QUEUE = "prompts"  # app.engine.celery_app.QUEUE: kombu's Redis transport keeps it as a list
Rows = list[tuple[str, str, str]]


@dataclass
class Setup:
    kids: Children
    db: str
    env: dict[str, str]  # common to the API and the worker
    fast_mock: str
    slow_mock: str
    broker: str
    redis_port: int
    pg: asyncpg.Connection  # to the bench database


def family_cpu(pid: int) -> float:
    """CPU seconds of a process and its direct children (uvicorn's workers)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for kid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                total += cpu_seconds(int(kid))
    return total


def thread_cpu(pid: int) -> list[tuple[float, int]]:
    """(CPU seconds, tid) of each thread, busiest first."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out.append(
                ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(task.name))
            )
    return sorted(out, reverse=True)


def user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def pg_backend_cpu(pg: asyncpg.Connection, db: str) -> dict[int, float]:
    """CPU seconds of the PostgreSQL backends serving our database (readable when we run as
    root or as postgres; empty otherwise)."""
    pids = await pg.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", db)
    out = {}
    for row in pids:
        with contextlib.suppress(OSError):
            out[row["pid"]] = cpu_seconds(row["pid"])
    return out


async def reset(s: Setup) -> None:
    """No prompts in the database, no messages in our Redis."""
    await s.pg.execute("TRUNCATE prompt_requests CASCADE")
    with redis.Redis(port=s.redis_port) as client:
        client.flushall()


def queue_length(s: Setup) -> int:
    with redis.Redis(port=s.redis_port) as client:
        return int(client.llen(QUEUE))


def start_redis(kids: Children, port: int, workdir: str) -> subprocess.Popen[bytes]:
    with (kids.logs / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", workdir],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    kids.procs.append(proc)
    return proc


async def start_api(
    http: aiohttp.ClientSession, s: Setup, name: str, *, celery: bool
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = s.env | {"PORT": str(port), "WORKERS": "2", "OPENAI_BASE_URL": s.fast_mock}
    env["CELERY_BROKER_URL"] = s.broker if celery else ""
    api = s.kids.start(name, env, "-m", "app", "serve")
    await wait_up(http, f"http://127.0.0.1:{port}/healthz", api)
    await asyncio.sleep(1)
    return api, f"http://127.0.0.1:{port}"


def start_worker(s: Setup, name: str, mock: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = s.env | {
        "CELERY_BROKER_URL": s.broker, "OPENAI_BASE_URL": mock,
        "WORKER_CONCURRENCY": str(concurrency), "WORKER_HEALTH_PORT": str(free_port()),
    }  # fmt: skip
    return s.kids.start(name, env, "-m", "app", "worker")


async def post_only(
    http: aiohttp.ClientSession, api: str, samples: Samples, measured: bool
) -> bool:
    t0, outcome = time.perf_counter(), ""
    try:
        async with http.post(f"{api}/ai/prompts/", json=PROMPT) as reply:
            await reply.read()
            outcome = "ok" if reply.status == 202 else f"POST {reply.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    if measured:
        if outcome == "ok":
            samples.latency.append(time.perf_counter() - t0)
        else:
            samples.errors[outcome] += 1
    return outcome == "ok"


async def enqueue_phase(
    http: aiohttp.ClientSession, s: Setup, api: subprocess.Popen[bytes], url: str,
    clients: int, args: argparse.Namespace,
) -> Rows:  # fmt: skip
    await reset(s)
    if wrk := shutil.which("wrk"):
        # wrk, as in bench.gateways: an aiohttp client in this process costs about 0.2 ms of
        # CPU per request, on the same cores as the API, and caps the rate it can measure.
        from bench.gateways import wrk_load  # (it imports this module)

        headers = dict(http.headers)
        await wrk_load(wrk, f"{url}/ai/prompts/", headers, PROMPT, clients, args.warmup)
        cpu = family_cpu(api.pid)
        load = await wrk_load(
            wrk, f"{url}/ai/prompts/", headers, PROMPT, clients, args.enqueue_duration
        )
        used, done = family_cpu(api.pid) - cpu, load.ok
        latency = f"{load.p50:.1f} / {load.p99:.1f} ms"
        errors = ", ".join(f"{k} {v}" for k, v in load.errors.items()) or "0"
        seconds = load.seconds
    else:
        samples = Samples()
        start = time.perf_counter()
        measure_from, end = start + args.warmup, start + args.warmup + args.enqueue_duration
        cpu0: list[float] = []

        async def loop() -> None:
            while (now := time.perf_counter()) < end:
                if now >= measure_from and not cpu0:
                    cpu0.append(family_cpu(api.pid))
                await post_only(http, url, samples, now >= measure_from)

        await asyncio.gather(*(loop() for _ in range(clients)))
        used = family_cpu(api.pid) - (cpu0[0] if cpu0 else 0.0)
        done = len(samples.latency)
        latency, errors = p50_p99(samples.latency), errors_text(samples.errors)
        seconds = args.enqueue_duration
    rows = await s.pg.fetchval("SELECT count(*) FROM prompt_requests")
    name = f"1. Enqueue, {clients} clients"
    return [(name, m, v) for m, v in (
        ("**POST /ai/prompts/ per s**", f"**{done / seconds:,.0f}**"),
        ("POST p50 / p99", latency),
        ("errors", errors),
        ("API CPU (2 uvicorn workers) per POST", f"{used * 1000 / max(1, done):.2f} ms"),
        ("rows written / messages in Redis after", f"{rows:,} / {queue_length(s):,}"),
    )]  # fmt: skip


async def preload(http: aiohttp.ClientSession, url: str, n: int, clients: int) -> list[str]:
    left, errors = [n], Counter[str]()

    async def loop() -> None:
        while left[0] > 0:
            left[0] -= 1
            samples = Samples()
            if not await post_only(http, url, samples, True):
                errors.update(samples.errors)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return [errors_text(errors)]


async def completion_phase(
    http: aiohttp.ClientSession, s: Setup, url: str, args: argparse.Namespace
) -> Rows:
    await reset(s)
    n, t0 = args.prompts, time.perf_counter()
    (post_errors,) = await preload(http, url, n, 64)
    preload_s = time.perf_counter() - t0
    queued, rows = queue_length(s), await s.pg.fetchval("SELECT count(*) FROM prompt_requests")
    pg0, busy0 = await pg_backend_cpu(s.pg, s.db), machine_busy()
    spawn = time.perf_counter()
    worker = start_worker(s, "worker-slow", s.slow_mock, args.worker_concurrency)
    timeline: list[tuple[float, int, int, float]] = []  # (t, done, running, cpu)
    threads_at: list[dict[int, float]] = []  # CPU seconds per thread id, per sample
    peak_rss, failed, deadline = 0.0, 0, spawn + args.completion_timeout
    while time.perf_counter() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode})")
        counts = await s.pg.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'completed') AS done,"
            " count(*) FILTER (WHERE status = 'running') AS running,"
            " count(*) FILTER (WHERE status NOT IN ('completed', 'running', 'pending')) AS bad"
            " FROM prompt_requests"
        )
        with contextlib.suppress(OSError):
            peak_rss = max(peak_rss, rss_mib(worker.pid))
        now = time.perf_counter() - spawn
        timeline.append((now, counts["done"], counts["running"], cpu_seconds(worker.pid)))
        threads_at.append({tid: c for c, tid in thread_cpu(worker.pid)})
        failed = counts["bad"]
        if counts["done"] + failed >= rows:
            break
        await asyncio.sleep(0.1)
    pg1, busy1 = await pg_backend_cpu(s.pg, s.db), machine_busy()
    total_s = timeline[-1][0]
    user, system = user_system(worker.pid)
    rss_end = rss_mib(worker.pid)
    Children.stop(worker)
    done = timeline[-1][1]
    if done < n:
        raise RuntimeError(f"only {done} of {n} completed in {args.completion_timeout:g} s")

    def at(fraction: float) -> int:
        return next(i for i, x in enumerate(timeline) if x[1] >= fraction * n)

    ia, ib = at(0.1), at(0.9)
    first, a, b = timeline[at(1 / n)], timeline[ia], timeline[ib]
    steady_done = max(1, b[1] - a[1])
    threads = sorted(
        ((c - threads_at[ia].get(tid, 0.0), tid) for tid, c in threads_at[ib].items()),
        reverse=True,
    )
    rate = (b[1] - a[1]) / max(b[0] - a[0], 1e-9)
    cpu_steady = (b[3] - a[3]) / steady_done
    running = [x[2] for x in timeline]
    in_steady = sorted(x[2] for x in timeline[ia : ib + 1])
    pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    main_cpu = next((c for c, tid in threads if tid == worker.pid), 0.0)
    others = [(c, tid) for c, tid in threads if tid != worker.pid]
    name = f"2. One worker, {n:,} prompts, mock {args.delay_ms:g} ms"
    return [(name, m, v) for m, v in (
        ("preload (64 clients, no worker running)",
         f"{preload_s:.1f} s, {rows:,} rows, {queued:,} messages queued,"
         f" POST errors {post_errors}"),
        ("worker spawn → first completion", f"{first[0]:.2f} s"),
        ("worker spawn → all completed", f"{total_s:.1f} s ({failed} not completed)"),
        ("**completions/s, steady (10 %→90 %)**", f"**{rate:,.0f}**"),
        ("completions/s, overall (spawn → last)", f"{n / total_s:,.0f}"),
        ("max prompts `running` at once (100 ms samples)",
         f"{max(running):,} (median of the samples in 10-90 %:"
         f" {in_steady[len(in_steady) // 2]:,})"),
        ("worker RSS peak / at the end", f"{peak_rss:.0f} / {rss_end:.0f} MiB"),
        ("**worker CPU per completion, steady**", f"**{cpu_steady * 1000:.2f} ms**"),
        ("worker CPU, whole run (incl. start-up)",
         f"{user + system:.1f} s = {(user + system) * 1000 / n:.2f} ms per prompt;"
         f" user {user:.1f} s, system {system:.1f} s"),
        ("worker CPU by thread, steady, per completion",
         f"main (Celery consumer) {main_cpu * 1000 / steady_done:.2f} ms; busiest other"
         f" (the prompt loop) {(others[0][0] if others else 0) * 1000 / steady_done:.2f} ms;"
         f" {len(others) - 1} more {sum(c for c, _ in others[1:]) * 1000 / steady_done:.2f} ms"),
        ("worker CPU use, steady", f"{(b[3] - a[3]) / max(b[0] - a[0], 1e-9):.0%} of one CPU"),
        ("PostgreSQL backends of our DB, CPU over the run",
         f"{pg_cpu:.1f} s = {pg_cpu * 1000 / n:.2f} ms per prompt" if pg1 else "not readable"),
        ("machine CPU busy over the run", f"{busy:.0%} of {len(os.sched_getaffinity(0))} CPUs"),
    )]  # fmt: skip


async def latency_run(
    http: aiohttp.ClientSession, s: Setup, url: str, args: argparse.Namespace, label: str
) -> Rows:
    warm = Samples()
    for _ in range(5):  # waits for the worker to come up, opens connections
        await submit(http, url, PROMPT, warm, timeout=30, every=0.01)
    if warm.errors:
        raise RuntimeError(f"{label}: warm-up failed: {errors_text(warm.errors)}")
    await reset(s)
    samples = Samples()
    for _ in range(args.sequential):
        await submit(http, url, PROMPT, samples, timeout=10, every=0.002)
    pickup = await s.pg.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY x) AS p99 FROM"
        " (SELECT extract(epoch FROM started_at - created_at) * 1000 AS x"
        "  FROM prompt_requests WHERE status = 'completed') t"
    )
    run = await s.pg.fetchval(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY"
        " extract(epoch FROM finished_at - started_at) * 1000) FROM prompt_requests"
        " WHERE status = 'completed'"
    )
    name = f"3. Sequential, {label}"
    return [(name, m, v) for m, v in (
        ("**submit→completed p50 / p99**", f"**{p50_p99(samples.latency)}**"),
        ("POST alone p50 / p99", p50_p99(samples.post)),
        ("created_at→started_at (DB clock) p50 / p99",
         f"{pickup['p50'] or 0:.1f} / {pickup['p99'] or 0:.1f} ms"),
        ("started_at→finished_at (DB clock) p50", f"{run or 0:.1f} ms"),
        ("GET polls per prompt", f"{samples.gets / max(1, len(samples.latency)):.1f}"),
        ("errors", errors_text(samples.errors)),
    )]  # fmt: skip


async def measure(
    args: argparse.Namespace, kids: Children, db: str, workdir: str
) -> tuple[Rows, list[str]]:
    fast_port, slow_port, redis_port = free_port(), free_port(), free_port()
    env = os.environ | {
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        "ENVIRONMENT": "production", "LOG_LEVEL": "warning", "LOCAL_MODEL_ENABLED": "false",
        "OPENAI_API_KEY": MOCK_KEY, "ENCRYPTION_KEYS": generate_key(),
        # One bench user queues every prompt with no worker running: no per-user cap.
        "MAX_PENDING_PER_USER": "0",
    }  # fmt: skip
    fast = kids.start("mock-fast", env, "-m", "tests.mocks.openai_server", "--port", str(fast_port))
    slow = kids.start(
        "mock-slow", env, "-m", "tests.mocks.openai_server", "--port", str(slow_port),
        "--delay-ms", f"{args.delay_ms:g}",
    )  # fmt: skip
    start_redis(kids, redis_port, workdir)
    run_cmd(env, str(BIN / "alembic"), "upgrade", "head")
    key = run_cmd(env, str(BIN / "python"), "-m", "app", "create-user", "bench@example.com")
    pg = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}")
    s = Setup(kids, db, env, f"http://127.0.0.1:{fast_port}/v1", f"http://127.0.0.1:{slow_port}/v1",
              f"redis://127.0.0.1:{redis_port}/0", redis_port, pg)  # fmt: skip
    rows: Rows = []
    notes: list[str] = []
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {key.split()[-1]}"},
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=0),
        ) as http:
            await wait_up(http, f"{s.fast_mock}/chat/completions", fast)
            await wait_up(http, f"{s.slow_mock}/models", slow)
            for _ in range(100):
                with contextlib.suppress(redis.RedisError), redis.Redis(port=redis_port) as r:
                    if r.ping():
                        break
                await asyncio.sleep(0.05)
            api, url = await start_api(http, s, "api-celery", celery=True)
            if not args.skip_enqueue:
                for clients in args.clients:
                    rows += await enqueue_phase(http, s, api, url, clients, args)
            if not args.skip_completion:
                rows += await completion_phase(http, s, url, args)
            if not args.skip_latency:
                await reset(s)
                worker = start_worker(s, "worker-fast", s.fast_mock, args.worker_concurrency)
                rows += await latency_run(http, s, url, args, "Celery mode (API + 1 worker)")
                Children.stop(worker)
                Children.stop(api)
                api, url = await start_api(http, s, "api-embedded", celery=False)
                rows += await latency_run(http, s, url, args, "embedded mode (API runs them)")
            Children.stop(api)
    finally:
        await pg.close()
    for log in sorted(kids.logs.glob("*.log")):
        lines = [x for x in kids.log(log.stem) if x.strip()]
        if args.show_logs:
            print(f"--- {log.name}:", *lines, sep="\n", file=sys.stderr)
        if log.stem != "redis" and lines:
            # Celery's warning about running as root takes 10 lines; report what else is there.
            root = ("superuser", "not recommended", "--uid option", "User information:")
            other = [x for x in lines if not x.startswith(" ") and not any(r in x for r in root)]
            first = f"; 1st other: `{other[0][:160]}`" if other else " (Celery's root warning)"
            notes.append(f"{log.stem} log at LOG_LEVEL=warning: {len(lines)} lines{first}")
    return rows, notes


HEADER = """# Prompt Manager Celery-mode benchmark

- Date: {date}; command: `.venv/bin/python -m bench.celery_load{argv}`
- Machine: nproc {nproc}, {cpu}, {system}
- Python {python}; PostgreSQL {pg}; {redis}; {versions}
- API: `python -m app serve`, WORKERS=2, ENVIRONMENT=production, DATABASE_POOL_SIZE default (20);
  worker: `python -m app worker`, WORKER_CONCURRENCY={wc}, WORKER_PREFETCH_MULTIPLIER default
  (200); broker: our own redis-server; the client, API, worker, Redis, PostgreSQL and the mocks
  share these CPUs
- Phase 1: no worker running; {w:g} s warm-up then {d:g} s measured per concurrency, load from
  `wrk -t1` (an aiohttp loop in this process when wrk is missing).
  Phase 2: mock answers after {delay:g} ms. Phase 3: {seq} prompts, mock answers at once,
  GET every 2 ms

| Phase | Metric | Value |
|---|---|---|
"""


def report(rows: Rows, notes: list[str], args: argparse.Namespace, pg_version: str) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    header = HEADER.format(
        date=f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        argv="".join(f" {a}" for a in sys.argv[1:]),
        nproc=len(os.sched_getaffinity(0)),
        cpu=next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?"),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        pg=pg_version,
        redis=f"Redis {redis_version[2].removeprefix('v=') if len(redis_version) > 2 else '?'}",
        versions=", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES),
        wc=args.worker_concurrency, w=args.warmup, d=args.enqueue_duration,
        delay=args.delay_ms, seq=args.sequential,
    )  # fmt: skip
    table = "".join(f"| {phase} | {metric} | {value} |\n" for phase, metric, value in rows)
    return header + table + "\n" + "".join(f"- {note}\n" for note in notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="phase 1")
    parser.add_argument("--enqueue-duration", type=float, default=8.0, help="phase 1, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="phase 1, s before measuring")
    parser.add_argument("--prompts", type=int, default=3000, help="phase 2")
    parser.add_argument("--delay-ms", type=float, default=1000.0, help="phase 2 mock delay")
    parser.add_argument("--worker-concurrency", type=int, default=1000)
    parser.add_argument("--completion-timeout", type=float, default=60.0, help="phase 2, s")
    parser.add_argument("--sequential", type=int, default=200, help="phase 3 prompts per mode")
    parser.add_argument("--skip-enqueue", action="store_true")
    parser.add_argument("--skip-completion", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--show-logs", action="store_true", help="print the children's logs")
    args = parser.parse_args()
    args.time_limit = 60 + len(args.clients) * (args.warmup + args.enqueue_duration)
    args.time_limit += args.completion_timeout
    try:
        asyncio.run(
            run_benchmark(
                args.time_limit,
                lambda kids, db, logs: measure(args, kids, db, str(logs)),
                lambda rows, notes, version: report(rows, notes, args, version),
                RESULTS,
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM
        sys.exit("interrupted: processes stopped, database dropped")


if __name__ == "__main__":
    main()
