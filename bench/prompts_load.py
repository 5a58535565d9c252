"""Load benchmark of the prompt path: submit → background run → poll until `completed`.

Method. Everything runs on this machine over loopback, each piece in its own process: the mock
OpenAI upstream (`tests.mocks.openai_server`, answers at once), a throwaway PostgreSQL database
(`pm_bench_<random>`, migrated with Alembic, always dropped at the end) and the API (`python -m
app serve`, WORKERS=1, ENVIRONMENT=production). One aiohttp session drives a closed loop of N
clients; each submits a prompt, then polls `GET /ai/prompts/{id}` every 5 ms until it is final
(more than 10 s, or any other outcome, is an error). A prompt is measured when it was submitted
after the warm-up and before the window ends; the rate is measured completions / window. The
same loop against the mock alone gives the floor. Memory is VmRSS of the serving process from
/proc, sampled every 20 ms for the peak; CPU is its utime + stime over the window. The local
model phase starts a fresh API with the model enabled and runs a few prompts one at a time
(polled every 50 ms, so the poller does not steal CPU from the model). The client, the API,
PostgreSQL and the mock share the machine's CPUs, so the API figures are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from app.kit.sealing import generate_key

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "bench" / "results" / "prompts_load.md"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MOCK_KEY = "sk-mock-0123456789abcdef"
PACKAGES = ("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "openai", "aiohttp", "xllamacpp")
PROMPT = {"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "hello"}
STORY = "Write a long story about a lighthouse keeper and a storm."
LOCAL_PROMPT = PROMPT | {"model": "local", "prompt_text": STORY, "max_tokens": 64}
Rows = list[tuple[str, str, str]]


@dataclass
class Samples:
    latency: list[float] = field(default_factory=list)  # s, submit → completed (or the call)
    post: list[float] = field(default_factory=list)  # s, the POST alone
    errors: Counter[str] = field(default_factory=Counter)
    gets: int = 0


class Children:
    """`python …` child processes in their own sessions (Ctrl-C reaches only us), by PID."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, list[subprocess.Popen[bytes]]()

    def start(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "python"), *args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self, name: str) -> list[str]:
        return (self.logs / f"{name}.log").read_text(errors="replace").splitlines()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(x.split()[1]) / 1024 for x in status if x.startswith("VmRSS:"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_pid(pid: int) -> tuple[int, str]:
    """uvicorn serves in-process when WORKERS=1; if `serve` forked one child, measure that."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    kids = [kid for task in tasks for kid in (task / "children").read_text().split()]
    if len(kids) == 1:
        return int(kids[0]), f"measured its child {kids[0]}"
    return pid, f"measured `serve` pid {pid} itself ({len(kids)} child processes)"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of seconds, in ms."""
    ordered = sorted(values)
    return ordered[max(0, -int(-q * len(ordered) // 1) - 1)] * 1000 if ordered else float("nan")


def p50_p99(values: list[float], digits: int = 1) -> str:
    return f"{pct(values, 0.5):.{digits}f} / {pct(values, 0.99):.{digits}f} ms"


def errors_text(errors: Counter[str]) -> str:
    total = sum(errors.values())
    return f"{total} ({', '.join(f'{k} x{n}' for k, n in errors.most_common())})" if total else "0"


def run_cmd(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


async def wait_up(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as reply:
                if reply.status < 500:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up (exit code {proc.poll()})")


async def closed_loop(
    args: argparse.Namespace, seconds: float, one: Callable[[bool], Awaitable[Any]]
) -> None:
    """`args.concurrency` loops calling `one(measured)` until warm-up + `seconds` have passed."""
    start = time.perf_counter()
    measure_from, end = start + args.warmup, start + args.warmup + seconds

    async def loop() -> None:
        while (now := time.perf_counter()) < end:
            await one(now >= measure_from)

    await asyncio.gather(*(loop() for _ in range(args.concurrency)))


async def submit(
    http: aiohttp.ClientSession, api: str, body: dict[str, Any], samples: Samples,
    measured: bool = True, *, timeout: float = 10.0, every: float = 0.005,
) -> dict[str, Any]:  # fmt: skip
    """One prompt: POST, then GET every `every` s until final; recorded when `measured`."""
    detail: dict[str, Any] = {}
    t0, t_post, gets, outcome = time.perf_counter(), 0.0, 0, ""
    try:
        async with http.post(f"{api}/ai/prompts/", json=body) as reply:
            prompt_id = (await reply.json())["id"] if reply.status == 202 else None
            outcome = f"not final after {timeout:g} s" if prompt_id else f"POST {reply.status}"
        t_post = time.perf_counter() - t0
        while prompt_id and time.perf_counter() - t0 < timeout:
            await asyncio.sleep(every)
            gets += 1
            async with http.get(f"{api}/ai/prompts/{prompt_id}") as reply:
                detail = await reply.json() if reply.ok else {"status": f"GET {reply.status}"}
            if detail["status"] not in ("pending", "running"):
                code = (detail.get("error") or {}).get("code")
                outcome = detail["status"] + (f": {code}" if code else "")
                break
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    if measured:
        samples.gets += gets
        if outcome == "completed":
            samples.latency.append(time.perf_counter() - t0)
            samples.post.append(t_post)
        else:
            samples.errors[outcome] += 1
    return detail


async def floor_phase(http: aiohttp.ClientSession, mock: str, args: argparse.Namespace) -> Rows:
    samples, name = Samples(), f"Mock upstream direct, {args.concurrency} clients"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    headers = {"Authorization": f"Bearer {MOCK_KEY}"}  # instead of the session's API key

    async def one(measured: bool) -> None:
        t0, ok = time.perf_counter(), False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.post(f"{mock}/chat/completions", json=body, headers=headers) as r:
                ok = r.status == 200 and bool(await r.read())
        if measured and ok:
            samples.latency.append(time.perf_counter() - t0)
        elif measured:
            samples.errors["mock error"] += 1

    await closed_loop(args, args.floor_duration, one)
    return [(name, m, v) for m, v in (
        ("requests/s", f"{len(samples.latency) / args.floor_duration:,.0f}"),
        ("latency p50 / p99", p50_p99(samples.latency, 2)),
        ("errors", errors_text(samples.errors)),
    )]  # fmt: skip


async def load_phase(
    http: aiohttp.ClientSession, api: str, pid: int, args: argparse.Namespace
) -> Rows:
    samples, peak = Samples(), [rss_mib(pid)]

    async def watch() -> float:
        """RSS every 20 ms; returns the API's CPU seconds over the measured window."""
        end, cpu0 = time.perf_counter() + args.warmup + args.duration, None
        while (left := end - time.perf_counter()) > 0:
            cpu0 = cpu_seconds(pid) if cpu0 is None and left <= args.duration else cpu0
            peak.append(rss_mib(pid))
            await asyncio.sleep(0.02)
        return cpu_seconds(pid) - (cpu0 or 0.0)

    one = partial(submit, http, api, PROMPT, samples)  # one(measured)
    used, _ = await asyncio.gather(watch(), closed_loop(args, args.duration, one))
    await asyncio.sleep(1)
    done, name, rss = len(samples.latency), f"API, {args.concurrency} clients", "API memory (RSS)"
    return [(name, m, v) for m, v in (
        ("**completed prompts/s**", f"**{done / args.duration:,.0f}**"),
        ("submit→completed p50 / p99", p50_p99(samples.latency)),
        ("POST alone p50 / p99", p50_p99(samples.post)),
        ("errors", errors_text(samples.errors)),
        ("GET polls per measured prompt", f"{samples.gets / max(1, done):.1f}"),
        ("API CPU per completed prompt", f"{used * 1000 / max(1, done):.1f} ms"),
        ("API CPU use", f"{used / args.duration:.0%} of one CPU"),
    )] + [(rss, "peak during load", f"{max(peak):.0f} MiB"),
          (rss, "1 s after load", f"{rss_mib(pid):.0f} MiB")]  # fmt: skip


async def local_phase(http: aiohttp.ClientSession, api: str, pid: int, calls: int) -> Rows:
    before, samples, rates, tokens = rss_mib(pid), Samples(), list[float](), list[int]()
    for i in range(calls):
        timeout = 120 if i == 0 else 60
        detail = await submit(http, api, LOCAL_PROMPT, samples, timeout=timeout, every=0.05)
        if reply := detail.get("response"):
            tokens.append(reply["output_tokens"])
            rates.append(reply["output_tokens"] / max(reply["duration_ms"] / 1000, 1e-3))
    name, warm, later = (
        "Local model (`local`, max_tokens 64)",
        rates[1:] or [0.0],
        f"calls 2-{calls}",
    )
    return [(name, m, v) for m, v in (
        ("first call submit→completed (starts the model)",
         f"{samples.latency[0] * 1000:,.0f} ms" if rates else "failed"),
        ("tokens/s, first call", f"{rates[0]:.0f}" if rates else "n/a"),
        (f"tokens/s, {later}: median (min-max)",
         f"{statistics.median(warm):.0f} ({min(warm):.0f}-{max(warm):.0f})"),
        (f"submit→completed, {later}: p50", f"{pct(samples.latency[1:], 0.5):,.0f} ms"),
        ("output tokens per call", ", ".join(map(str, tokens)) or "n/a"),
        ("errors", errors_text(samples.errors)),
        ("API RSS before first call / after last", f"{before:.0f} / {rss_mib(pid):.0f} MiB"),
    )]  # fmt: skip


HEADER = """# Prompt Manager load benchmark

- Date: {date}; command: `.venv/bin/python -m bench.prompts_load{argv}`
- Machine: nproc {nproc}, {cpu}, {system}
- Python {python}; PostgreSQL {pg}; {versions}
- {c} clients, {w:g} s warm-up then {d:g} s measured (mock floor: {f:g} s); the client, API,
  PostgreSQL and mock share these CPUs

| Phase | Metric | Value |
|---|---|---|
"""


def report(rows: Rows, notes: list[str], args: argparse.Namespace, pg_version: str) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    header = HEADER.format(
        date=f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        argv="".join(f" {a}" for a in sys.argv[1:]),
        nproc=len(os.sched_getaffinity(0)),
        cpu=next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?"),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        pg=pg_version,
        versions=", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES),
        c=args.concurrency, w=args.warmup, d=args.duration, f=args.floor_duration,
    )  # fmt: skip
    table = "".join(f"| {phase} | {metric} | {value} |\n" for phase, metric, value in rows)
    return header + table + "\n" + "".join(f"- {note}\n" for note in notes)


async def start_api(
    http: aiohttp.ClientSession, kids: Children, env: dict[str, str], name: str, *, local: bool
) -> tuple[subprocess.Popen[bytes], str, int, str]:
    """Spawn `python -m app serve`; returns it, its URL, the PID to measure and a note."""
    port, t0 = free_port(), time.perf_counter()
    env = env | {"PORT": str(port), "LOCAL_MODEL_ENABLED": str(local).lower()}
    api = kids.start(name, env, "-m", "app", "serve")
    await wait_up(http, f"http://127.0.0.1:{port}/healthz", api)
    up_ms = (time.perf_counter() - t0) * 1000
    await asyncio.sleep(1)  # let startup settle before the idle reading
    pid, how = serving_pid(api.pid)
    return api, f"http://127.0.0.1:{port}", pid, f"{name}: up {up_ms:,.0f} ms after spawn; {how}"


async def measure(args: argparse.Namespace, kids: Children, db: str) -> tuple[Rows, list[str]]:
    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    env = os.environ | {
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        "ENVIRONMENT": "production", "WORKERS": "1", "LOG_LEVEL": "warning",
        "OPENAI_API_KEY": MOCK_KEY, "OPENAI_BASE_URL": mock_url,
        "ENCRYPTION_KEYS": generate_key(),
    }  # fmt: skip
    mock = kids.start("mock", env, "-m", "tests.mocks.openai_server", "--port", str(mock_port))
    run_cmd(env, str(BIN / "alembic"), "upgrade", "head")
    key = run_cmd(env, str(BIN / "python"), "-m", "app", "create-user", "bench@example.com")
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {key.split()[-1]}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as http:
        await wait_up(http, f"{mock_url}/chat/completions", mock)
        rows = await floor_phase(http, mock_url, args)
        api, url, pid, note = await start_api(http, kids, env, "api", local=False)
        rows.append(("API memory (RSS)", "idle after startup", f"{rss_mib(pid):.0f} MiB"))
        rows += await load_phase(http, url, pid, args)
        kids.stop(api)
        notes, names = [note], ["api"]
        if not args.skip_local:
            api, url, pid, note = await start_api(http, kids, env, "api-local", local=True)
            rows += await local_phase(http, url, pid, args.local_calls)
            kids.stop(api)
            notes, names = [*notes, note], [*names, "api-local"]
    for name in names:
        if lines := kids.log(name):
            notes.append(f"{name} log at LOG_LEVEL=warning: {len(lines)} lines; 1st: `{lines[0]}`")
    return rows, notes


Measure = Callable[[Children, str, Path], Awaitable[tuple[Rows, list[str]]]]


async def run_benchmark(
    time_limit: float, measure: Measure, report: Callable[[Rows, list[str], str], str], out: Path
) -> None:
    """Create a throwaway database, `measure(children, database, log_dir)` within
    `time_limit`, and always stop the children (last started first) and drop the database;
    then print the report and write it to `out`. Shared by the benchmarks under bench/."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    db = f"pm_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    pg_version = str(await admin.fetchval("SHOW server_version"))
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
        with tempfile.TemporaryDirectory(prefix="pm_bench_") as logs:
            kids = Children(Path(logs))
            try:
                async with asyncio.timeout(time_limit):
                    rows, notes = await measure(kids, db, Path(logs))
            except Exception:
                for log in sorted(Path(logs).glob("*.log")):
                    print(f"--- {log.name}:", *kids.log(log.stem)[-15:], sep="\n", file=sys.stderr)
                raise
            finally:
                for proc in reversed(kids.procs):
                    kids.stop(proc)
    finally:
        try:
            await asyncio.wait_for(
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'), 15
            )
        except Exception as exc:
            print(f"could not drop database {db} ({exc!r}): drop it by hand", file=sys.stderr)
        await admin.close()
    text = report(rows, notes, pg_version)
    print(text)
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"written to {out.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--floor-duration", type=float, default=5.0, help="measured s, mock alone")
    parser.add_argument("--local-calls", type=int, default=5, help="prompts sent to `local`")
    parser.add_argument("--skip-local", action="store_true", help="skip the local model phase")
    args = parser.parse_args()
    args.time_limit = 150 + args.duration + args.floor_duration + 2 * args.warmup
    try:
        asyncio.run(
            run_benchmark(
                args.time_limit,
                lambda kids, db, _logs: measure(args, kids, db),
                lambda rows, notes, version: report(rows, notes, args, version),
                RESULTS,
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM
        sys.exit("interrupted: processes stopped, database dropped")


if __name__ == "__main__":
    main()
