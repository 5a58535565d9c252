"""Side-by-side benchmark of LLM gateways: Prompt Manager, LiteLLM proxy, Portkey AI Gateway.

Method. Everything runs on this machine over loopback, each piece in its own process: one fast
mock of OpenAI's chat completions (`bench.mock_upstream`; `/v1` answers at once, `/d50/v1`
after 50 ms, `/d1000/v1` after 1 s), then one system after the other, each started, measured
and stopped before the next: the mock alone (scenario 1, the floor), LiteLLM's proxy (its own
venv under bench/.venvs/litellm, 2 uvicorn workers, no database), Portkey's gateway (npm
package under bench/.node, one Node process), and Prompt Manager (`python -m app serve`,
WORKERS=2, Celery mode with a redis-server and one worker of the script's own, a throwaway
PostgreSQL database): its `/v1/chat/completions` (scenario 3, every call committed to
PostgreSQL before the answer) and `POST /ai/prompts/` (scenario 4, 202 then the worker runs
it). `wrk` (one thread, closed loop, a Lua script for the POST body) drives each point: a
warm-up, then the measured seconds; the gateway's CPU is the utime + stime of all its
processes (parent and workers, from /proc) over the window, divided by the requests served.
A count-limited wrk run of N requests shows memory growth (VmRSS summed over the processes)
and CPU per request over a long run; a small aiohttp client measures time to the first
streamed token (scenario 5). Results go to bench/results/gateways.md, .json and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from app.kit.sealing import generate_key
from bench.celery_load import pg_backend_cpu, start_redis
from bench.prompts_load import (
    BIN,
    MOCK_KEY,
    PROMPT,
    ROOT,
    Children,
    Samples,
    errors_text,
    free_port,
    pct,
    run_benchmark,
    run_cmd,
    submit,
)

BENCH = ROOT / "bench"
VENVS = BENCH / ".venvs"
NODE_DIR = BENCH / ".node"
RESULTS = BENCH / "results"
REPORT = RESULTS / "gateways.md"
DATA = RESULTS / "gateways.json"
TICK = os.sysconf("SC_CLK_TCK")
LOGS = BENCH / ".logs" / "gateways"  # the children's logs of the last run (not committed)
LITELLM_VERSION = "1.108.7"
PORTKEY_VERSION = "1.15.2"
# Later @hono/node-server releases hand Portkey the upstream response's immutable headers,
# and every streamed answer fails with `TypeError: immutable` (Portkey-AI/gateway#1389, #1550).
HONO_NODE_SERVER = "1.13.8"
MATPLOTLIB_VERSION = "3.11.2"
LITELLM_KEY = "sk-litellm-bench-0123456789"
MESSAGES = [{"role": "user", "content": "hello"}]
EXPECTED_TEXT = "echo: hello from the mock upstream of OpenAI."  # bench.mock_upstream.WORDS
FULL_POINTS = "0:1,16,64 50:1,16,64,256 1000:64,256"
QUICK_POINTS = "0:1,64 50:64"
SYSTEMS = ("direct", "litellm", "portkey", "pm", "pm1")
LABELS = {
    "direct": "Mock upstream, direct",
    "litellm": "LiteLLM proxy",
    "portkey": "Portkey gateway",
    "pm-v1": "Prompt Manager /v1",
    "pm1-v1": "Prompt Manager /v1, 1 worker",
    "pm-202": "Prompt Manager /ai/prompts/ (202)",
}
SCENARIO = {
    "direct": "1", "litellm": "2", "portkey": "2", "pm-v1": "3", "pm1-v1": "3", "pm-202": "4",
}  # fmt: skip


# --- results ----------------------------------------------------------------------------


@dataclass
class Load:
    """One load-generator run."""

    requests: int  # responses received, any status
    ok: int  # 2xx/3xx
    seconds: float
    errors: dict[str, int]
    p50: float  # ms
    p90: float
    p99: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


@dataclass
class Point:
    system: str
    delay: int  # upstream ms
    clients: int
    rps: float
    p50: float
    p90: float
    p99: float
    requests: int
    errors: dict[str, int]
    cpu_ms: float | None  # the gateway's CPU per request
    pg_ms: float | None = None  # PostgreSQL backends' CPU per request (Prompt Manager)
    worker_ms: float | None = None  # the Celery worker's CPU per completed prompt
    note: str = ""


@dataclass
class Results:
    points: list[Point] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    ttft: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    startup: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    loadavg: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    key: str  # "direct", "litellm", "portkey", "pm-v1", "pm1-v1", "pm-202"
    url: Callable[[int], str]  # upstream delay (ms) → URL
    headers: Callable[[int], dict[str, str]]
    roots: list[int]  # its processes (with their descendants)
    pg: asyncpg.Connection | None = None  # Prompt Manager: its database
    db: str = ""
    worker: int | None = None  # Prompt Manager in scenario 4: the Celery worker's PID


@dataclass
class Ctx:
    cfg: argparse.Namespace
    kids: Children
    http: aiohttp.ClientSession
    res: Results
    mock_port: int
    logs: Path
    load: Callable[..., Awaitable[Load]]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)


# --- processes ----------------------------------------------------------------------------


def family(pid: int) -> list[int]:
    """A process and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(kid) for kid in (task / "children").read_text().split()]
    return out


def own_cpu(pid: int) -> float:
    """utime + stime of a process plus cutime + cstime: the CPU of children it has reaped,
    so a worker that exits (and is replaced) during a window does not take its CPU along."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def family_cpu(roots: list[int]) -> float:
    total = 0.0
    for root in roots:
        for pid in family(root):
            with contextlib.suppress(OSError):
                total += own_cpu(pid)
    return total


async def settle(roots: list[int], seconds: float = 120.0) -> float:
    """Wait until the processes stop burning CPU (workers still importing their code after
    the first one answers): less than 0.1 CPU-second over 1.5 s. Returns the seconds waited."""
    t0, last = time.perf_counter(), family_cpu(roots)
    while time.perf_counter() - t0 < seconds:
        checkpoint()
        await asyncio.sleep(1.5)
        now = family_cpu(roots)
        if now - last < 0.1:
            break
        last = now
    return time.perf_counter() - t0


def family_rss(roots: list[int]) -> tuple[float, int]:
    """(VmRSS MiB summed, process count)."""
    total, count = 0.0, 0
    for root in roots:
        for pid in family(root):
            with contextlib.suppress(OSError, StopIteration):
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                total += next(int(x.split()[1]) / 1024 for x in lines if x.startswith("VmRSS:"))
                count += 1
    return total, count


def spawn(
    ctx: Ctx, name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C reaches only us; its PID is its process group)."""
    with (ctx.logs / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    ctx.kids.procs.append(proc)  # run_benchmark stops it too, should we not get there
    ctx.started.append(proc)
    return proc


def stop_tree(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the child, SIGKILL it after `grace` s; then SIGKILL whatever is left of its
    process group (workers its parent did not take down). The group's ID is the PID we
    started, so this reaches nothing but that child's own processes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


_stopping = False


def checkpoint() -> None:
    """Raise CancelledError once Ctrl-C or SIGTERM arrived. aiohttp turns a cancellation that
    lands inside a request with a timeout into a TimeoutError, which the loops here catch: they
    call this, so a stop is never lost."""
    if _stopping:
        raise asyncio.CancelledError


def install_stop_handlers() -> None:
    """Ctrl-C and SIGTERM cancel the run (its `finally` blocks stop the children and drop the
    database). Installed on the loop, so they work even where SIGINT was ignored at start."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert task is not None

    def stop() -> None:
        global _stopping
        _stopping = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def wait_http(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], seconds: float
) -> float:
    """Wait until GET `url` answers below 500; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and proc.poll() is None:
        checkpoint()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
                if reply.status < 500:
                    return time.perf_counter() - t0
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {seconds:g} s (exit code {proc.poll()})")


# --- installs (outside the timed run) -----------------------------------------------------


def _marker(path: Path, spec: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if data.get("spec") == spec:
            return dict(data)
    return None


def ensure_venv(name: str, spec: str, dist: str) -> dict[str, Any]:
    """bench/.venvs/<name> with `spec` installed, created once and reused."""
    venv, log = VENVS / name, VENVS / f"{name}-install.log"
    mark = venv / ".bench-installed.json"
    if (found := _marker(mark, spec)) and (venv / "bin" / "python").exists():
        return found | {"this_run": None}
    shutil.rmtree(venv, ignore_errors=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    python = shutil.which("python3.11") or sys.executable
    print(f"installing {spec} into {venv.relative_to(ROOT)} (once) ...", file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    with log.open("wb") as out:
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", spec],
            stdout=out, stderr=subprocess.STDOUT, timeout=1800,
        )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"pip install {spec} failed ({done.returncode}); see {log}")
    seconds = time.perf_counter() - t0
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    data = {"spec": spec, "version": version, "seconds": round(seconds, 1),
            "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}", "python": python}  # fmt: skip
    mark.write_text(json.dumps(data))
    print(f"installed {spec} in {seconds:.0f} s", file=sys.stderr)
    return data | {"this_run": seconds}


def ensure_portkey(version: str) -> dict[str, Any]:
    """bench/.node with @portkey-ai/gateway (npm install --prefix), created once."""
    spec = f"@portkey-ai/gateway@{version} @hono/node-server@{HONO_NODE_SERVER}"
    mark = NODE_DIR / ".bench-installed.json"
    server = NODE_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if (found := _marker(mark, spec)) and server.exists():
        return found | {"this_run": None}
    if not shutil.which("npm") or not shutil.which("node"):
        raise RuntimeError("node and npm are needed for Portkey (apt-get install nodejs npm)")
    shutil.rmtree(NODE_DIR, ignore_errors=True)
    NODE_DIR.mkdir(parents=True)
    package = {
        "private": True,
        "dependencies": {"@portkey-ai/gateway": version},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER},
    }
    (NODE_DIR / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    print(f"installing {spec} into {NODE_DIR.relative_to(ROOT)} (once) ...", file=sys.stderr)
    t0 = time.perf_counter()
    done = subprocess.run(
        ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
         "--ignore-scripts"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode or not server.exists():
        raise RuntimeError(f"npm install failed ({done.returncode}):\n{done.stderr[-2000:]}")
    seconds = time.perf_counter() - t0
    data = {"spec": spec, "version": version, "seconds": round(seconds, 1),
            "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}"}  # fmt: skip
    mark.write_text(json.dumps(data))
    print(f"installed {spec} in {seconds:.0f} s", file=sys.stderr)
    return data | {"this_run": seconds}


def ensure_wrk() -> tuple[str | None, str]:
    """wrk's path (installing Debian's package if missing and possible) and a note."""
    if path := shutil.which("wrk"):
        return path, ""
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("installing wrk (apt-get install -y wrk) ...", file=sys.stderr)
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        t0 = time.perf_counter()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, check=False,
                           capture_output=True)  # fmt: skip
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, timeout=300,
                           check=False, capture_output=True)  # fmt: skip
        if path := shutil.which("wrk"):
            return path, f"wrk installed with apt-get in {time.perf_counter() - t0:.0f} s"
    return None, (
        "**wrk is not available (no apt-get, not root, or the install failed): the load came "
        "from the Python aiohttp closed-loop generator in this process, which is slower than "
        "wrk and shares the CPUs differently; compare only within this run**"
    )


# --- load generators ----------------------------------------------------------------------

LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
local limit = {limit}
local count = 0
{response}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"connect\\": %d, \\"read\\": %d, "
    .. "\\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, \\"p50\\": %d, \\"p90\\": %d, "
    .. "\\"p99\\": %d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""
# wrk's main thread sleeps for the whole -d even when its threads stop early: the script
# says when the limit is reached, and we SIGINT wrk, which then reports at once.
LUA_STOP = """function response(status, headers, body)
  count = count + 1
  if count == limit then
    io.write("WRK_LIMIT\\n")
    io.flush()
    wrk.thread:stop()
  end
end"""


def lua_script(headers: dict[str, str], body: dict[str, Any], limit: int) -> str:
    lines = "\n".join(f"wrk.headers[ [==[{k}]==] ] = [==[{v}]==]" for k, v in headers.items())
    return LUA.format(
        body=json.dumps(body, separators=(",", ":")),
        headers=lines,
        limit=limit,
        response=LUA_STOP if limit else "",
    )


async def wrk_load(
    wrk: str, url: str, headers: dict[str, str], body: dict[str, Any], clients: int,
    seconds: float, *, limit: int = 0, timeout: float = 10.0,
) -> Load:  # fmt: skip
    """One `wrk -t1` run (count-limited when `limit`: stops after that many responses)."""
    headers = {"Content-Type": "application/json"} | headers
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(headers, body, limit))
    argv = [wrk, "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout:g}s", "-s", script.name, url]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors_out = asyncio.create_task(proc.stderr.read())
    lines = []
    try:
        while raw := await proc.stdout.readline():
            lines.append(raw.decode().strip())
            if lines[-1] == "WRK_LIMIT":
                proc.send_signal(signal.SIGINT)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.unlink(script.name)
    err = await errors_out
    line = next((x for x in lines if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-500:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    errors = {k: r[k] for k in ("status", "connect", "read", "write", "timeout") if r[k]}
    return Load(
        requests=r["requests"], ok=r["requests"] - r["status"],
        seconds=r["duration_us"] / 1e6, errors=errors,
        p50=r["p50"] / 1000, p90=r["p90"] / 1000, p99=r["p99"] / 1000,
    )  # fmt: skip


async def py_load(
    url: str, headers: dict[str, str], body: dict[str, Any], clients: int, seconds: float,
    *, limit: int = 0, timeout: float = 10.0,
) -> Load:  # fmt: skip
    """The fallback when wrk is missing: a closed loop of aiohttp clients in this process."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | headers
    latencies, errors, sent = list[float](), Counter[str](), [0]
    t0 = time.perf_counter()
    end = t0 + seconds
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:

        async def loop() -> None:
            while time.perf_counter() < end and not (limit and sent[0] >= limit):
                checkpoint()
                sent[0] += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as reply:
                        await reply.read()
                        if reply.status >= 400:
                            errors["status"] += 1
                        else:
                            latencies.append(time.perf_counter() - start)
                except TimeoutError:
                    errors["timeout"] += 1
                except aiohttp.ClientError:
                    errors["read"] += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return Load(
        requests=len(latencies) + errors["status"], ok=len(latencies), seconds=elapsed,
        errors=dict(errors), p50=pct(latencies, 0.5), p90=pct(latencies, 0.9),
        p99=pct(latencies, 0.99),
    )  # fmt: skip


# --- what each system is asked --------------------------------------------------------------


def model_for(delay: int) -> str:
    """The model name that reaches the mock with `delay` (one entry per delay in every
    gateway's configuration; the direct path and Portkey choose the delay by URL)."""
    return "gpt-4o-mini" if delay == 0 else f"mockd{delay}/gpt-4o-mini"


def mock_base(port: int, delay: int) -> str:
    return f"http://127.0.0.1:{port}" + (f"/d{delay}" if delay else "") + "/v1"


# `--tools`: every chat also declares a function tool (as an agent's calls do); the mock
# answers with text all the same, so what is measured is the tools' cost on the request path.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]
BODY_EXTRA: dict[str, Any] = {}


def chat_body(delay: int) -> dict[str, Any]:
    return {"model": model_for(delay), "messages": MESSAGES, "max_tokens": 64, **BODY_EXTRA}


def body_for(target: Target, delay: int) -> dict[str, Any]:
    if target.key == "pm-202":
        return PROMPT | {"model": model_for(delay)}
    return chat_body(delay)


async def sanity(http: aiohttp.ClientSession, target: Target, seconds: float = 60.0) -> str:
    """One call must come back right (retried while the gateway finishes starting).
    Returns "" when it does, else why not (HTTP 404 means: not in this build)."""
    deadline, why = time.perf_counter() + seconds, ""
    while time.perf_counter() < deadline:
        checkpoint()
        try:
            async with http.post(
                target.url(0), json=body_for(target, 0), headers=target.headers(0)
            ) as reply:
                text = await reply.text()
                if target.key == "pm-202" and reply.status == 202:
                    return ""
                if reply.status == 200 and EXPECTED_TEXT in text:
                    return ""
                why = f"HTTP {reply.status}: {text[:200]}"
                if reply.status in (400, 401, 404, 405, 422):
                    return why
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = repr(exc)
        await asyncio.sleep(0.5)
    return why


# --- measurements -------------------------------------------------------------------------


async def pg_cpu(target: Target) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the bench database, by PID."""
    return await pg_backend_cpu(target.pg, target.db) if target.pg is not None else {}


def pg_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the backends spent between two readings (backends that exited in between are
    lost: an undercount; the pools keep their connections, so there are few)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def prompt_counts(target: Target) -> dict[str, int]:
    assert target.pg is not None
    rows = await target.pg.fetch("SELECT status, count(*) AS n FROM prompt_requests GROUP BY 1")
    return {str(r["status"]): int(r["n"]) for r in rows}


async def drain(target: Target, seconds: float) -> tuple[bool, float]:
    """Wait until no prompt is pending or running: (drained, seconds waited)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        checkpoint()
        counts = await prompt_counts(target)
        if not counts.get("pending") and not counts.get("running"):
            return True, time.perf_counter() - t0
        await asyncio.sleep(0.2)
    return False, time.perf_counter() - t0


async def measure_point(ctx: Ctx, target: Target, delay: int, clients: int) -> Point:
    checkpoint()
    cfg = ctx.cfg
    url, headers, body = target.url(delay), target.headers(delay), body_for(target, delay)
    side: list[int] = [target.worker] if target.worker else []
    before = await prompt_counts(target) if target.worker else {}
    worker0, pg0 = family_cpu(side), await pg_cpu(target)
    await ctx.load(url, headers, body, clients, cfg.warmup)
    cpu0, pg_window0 = family_cpu(target.roots), await pg_cpu(target)
    pids0 = {pid for root in target.roots for pid in family(root)}
    run = await ctx.load(url, headers, body, clients, cfg.duration)
    cpu1, pg1 = family_cpu(target.roots), await pg_cpu(target)
    replaced = pids0 - {pid for root in target.roots for pid in family(root)}
    served = max(1, run.requests)
    point = Point(
        system=target.key,
        delay=delay,
        clients=clients,
        rps=run.rps,
        p50=run.p50,
        p90=run.p90,
        p99=run.p99,
        requests=run.requests,
        errors=run.errors,
        cpu_ms=(cpu1 - cpu0) * 1000 / served,
        pg_ms=pg_since(pg_window0, pg1) * 1000 / served if target.pg is not None else None,
    )
    if replaced:  # uvicorn replaces a worker that misses its 5 s health check
        point.note = f"**{len(replaced)} of its processes died and were replaced**"
    if target.worker:  # scenario 4: let the worker finish, then count what it cost
        drained, waited = await drain(target, cfg.drain_timeout)
        after = await prompt_counts(target)
        done = after.get("completed", 0) - before.get("completed", 0)
        failed = after.get("failed", 0) - before.get("failed", 0)
        point.worker_ms = (family_cpu(side) - worker0) * 1000 / max(1, done)
        point.pg_ms = pg_since(pg0, await pg_cpu(target)) * 1000 / max(1, done)
        point.note += "; " if point.note else ""
        point.note += (
            f"worker finished the backlog {waited:.1f} s after the window"
            if drained
            else f"**backlog not drained {waited:.0f} s after the window**"
        ) + (f"; {failed} prompts failed" if failed else "")
        if failed:
            point.errors = point.errors | {"prompt failed": failed}
    print(
        f"  {target.key:8} {delay:>5} ms x{clients:<4} {point.rps:>9,.0f} req/s  p50 "
        f"{point.p50:7.2f}  p99 {point.p99:8.2f} ms  errors {sum(run.errors.values())}"
        f"  cpu {point.cpu_ms:.3f} ms/req   (load {loadavg()})",
        file=sys.stderr,
    )
    return point


async def long_run(ctx: Ctx, target: Target) -> None:
    """N requests at `--long-clients`, instant upstream: RSS before, after N/10 and after N."""
    cfg, n = ctx.cfg, ctx.cfg.long
    url, headers, body = target.url(0), target.headers(0), body_for(target, 0)
    known = [p.rps for p in ctx.res.points if p.system == target.key and p.delay == 0]
    rate = max(known, default=0.0) or 200.0
    rss0, procs = family_rss(target.roots)
    worker_rss0 = family_rss([target.worker])[0] if target.worker else None
    cpu0, t0, done, errors = family_cpu(target.roots), time.perf_counter(), 0, Counter[str]()
    marks = []
    for part, share in ((n // 10, 0.15), (n - n // 10, 0.85)):
        checkpoint()
        cap = min(cfg.long_timeout * share, part / max(rate, 50) * 3 + 15)
        run = await ctx.load(url, headers, body, cfg.long_clients, cap, limit=part)
        done += run.requests
        errors.update(run.errors)
        await asyncio.sleep(1)
        marks.append((done, family_rss(target.roots)[0]))
    elapsed, cpu = time.perf_counter() - t0 - 2, family_cpu(target.roots) - cpu0
    row: dict[str, Any] = {
        "system": target.key, "processes": procs, "requests": done, "clients": cfg.long_clients,
        "rss_idle": ctx.res.startup.get(f"{target.key}:rss", float("nan")),
        "rss_before": rss0, "first": marks[0][0], "rss_first": marks[0][1],
        "rss_last": marks[1][1], "cpu_ms": cpu * 1000 / max(1, done),
        "rps": done / max(elapsed, 1e-9), "errors": dict(errors), "note": "",
    }  # fmt: skip
    if done < n:
        row["note"] = f"only {done:,} of {n:,} within the time cap"
    if target.worker:
        drained, waited = await drain(target, cfg.drain_timeout * 2)
        row["note"] += (
            f"; Celery worker RSS {worker_rss0:.0f} → {family_rss([target.worker])[0]:.0f} MiB"
            f" ({'drained' if drained else 'NOT drained'} {waited:.0f} s after)"
        )
    ctx.res.memory.append(row)
    print(
        f"  {target.key:8} long run: {done:,} requests, RSS {rss0:.0f} → {marks[0][1]:.0f} → "
        f"{marks[1][1]:.0f} MiB, {row['cpu_ms']:.3f} ms CPU/req",
        file=sys.stderr,
    )


async def ttft(ctx: Ctx, target: Target) -> None:
    """Sequential streamed calls: time to the first chunk with content, and to [DONE]."""
    url, headers = target.url(0), target.headers(0)
    body = chat_body(0) | {"stream": True, "stream_options": {"include_usage": True}}
    first, whole, errors, usage, chunks, wrong = [], [], Counter[str](), 0, 0, 0
    for i in range(3 + ctx.cfg.ttft_calls):  # 3 warm-up calls
        checkpoint()
        t0, seen, text, got_usage, finished, n = time.perf_counter(), None, [], False, False, 0
        try:
            async with ctx.http.post(url, json=body, headers=headers) as reply:
                if reply.status != 200:
                    errors[f"HTTP {reply.status}"] += 1
                    await reply.read()
                    continue
                async for line in reply.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        finished = True
                        break
                    chunk = json.loads(data)
                    got_usage = got_usage or bool(chunk.get("usage"))
                    for choice in chunk.get("choices") or []:
                        if piece := (choice.get("delta") or {}).get("content"):
                            seen = seen or time.perf_counter() - t0
                            text.append(piece)
                            n += 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            continue
        if i < 3:
            continue
        if not finished or seen is None:
            errors["no content or no [DONE]"] += 1
            continue
        first.append(seen)
        whole.append(time.perf_counter() - t0)
        usage += got_usage
        chunks += n
        wrong += "".join(text) != EXPECTED_TEXT
    ctx.res.ttft.append(
        {
            "system": target.key,
            "calls": len(first),
            "p50": pct(first, 0.5),
            "p99": pct(first, 0.99),
            "whole_p50": pct(whole, 0.5),
            "chunks": chunks / max(1, len(first)),
            "usage": usage,
            "wrong_text": wrong,
            "errors": dict(errors),
        }
    )
    print(
        f"  {target.key:8} TTFT p50 {pct(first, 0.5):.2f} p99 {pct(first, 0.99):.2f} ms, "
        f"whole stream p50 {pct(whole, 0.5):.1f} ms, errors {sum(errors.values())}",
        file=sys.stderr,
    )


async def run_target(ctx: Ctx, target: Target, *, stream: bool = True, long: bool = True) -> None:
    ctx.res.startup[f"{target.key}:rss"] = family_rss(target.roots)[0]
    for delay, clients_list in ctx.cfg.points:
        for clients in clients_list:
            ctx.res.points.append(await measure_point(ctx, target, delay, clients))
    if long and ctx.cfg.long:
        await long_run(ctx, target)
    if stream and ctx.cfg.ttft_calls:
        await ttft(ctx, target)


# --- the systems ----------------------------------------------------------------------------


def minimal_env(home: Path) -> dict[str, str]:
    """What a peer gateway gets: no DATABASE_URL or keys of ours, no proxies."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"HOME": str(home)}


async def direct_phase(ctx: Ctx, mock: subprocess.Popen[bytes]) -> None:
    target = Target(
        "direct",
        url=lambda d: f"{mock_base(ctx.mock_port, d)}/chat/completions",
        headers=lambda d: {"Authorization": f"Bearer {MOCK_KEY}"},
        roots=[mock.pid],
    )
    if why := await sanity(ctx.http, target):
        raise RuntimeError(f"the mock answers wrong: {why}")
    await run_target(ctx, target)


def litellm_config(ctx: Ctx, delays: list[int]) -> str:
    lines = ["model_list:"]
    for delay in delays:
        lines += [
            f"  - model_name: {model_for(delay)}",
            "    litellm_params:",
            "      model: openai/gpt-4o-mini",
            f"      api_base: {mock_base(ctx.mock_port, delay)}",
            f"      api_key: {MOCK_KEY}",
        ]
    lines += [
        "general_settings:",
        f"  master_key: {LITELLM_KEY}",
        "litellm_settings:",
        "  telemetry: false",
        "  set_verbose: false",
    ]
    return "\n".join(lines) + "\n"


async def litellm_phase(ctx: Ctx) -> None:
    port, home = free_port(), ctx.logs / "litellm"
    home.mkdir(exist_ok=True)
    delays = sorted({0, *(d for d, _ in ctx.cfg.points)})
    (home / "config.yaml").write_text(litellm_config(ctx, delays))
    env = minimal_env(home) | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the price list from the internet
        "LITELLM_MODE": "PRODUCTION",  # no .env loading
        "LITELLM_LOG": "ERROR",
    }
    argv = [str(VENVS / "litellm" / "bin" / "litellm"), "--config", "config.yaml",
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "2",
            "--telemetry", "False"]  # fmt: skip
    t0 = time.perf_counter()
    proc = spawn(ctx, "litellm", argv, env, cwd=home)
    try:
        await wait_http(ctx.http, f"http://127.0.0.1:{port}/health/liveliness", proc, 300)
        target = Target(
            "litellm",
            url=lambda d: f"http://127.0.0.1:{port}/v1/chat/completions",
            headers=lambda d: {"Authorization": f"Bearer {LITELLM_KEY}"},
            roots=[proc.pid],
        )
        if why := await sanity(ctx.http, target, 120):
            raise RuntimeError(f"LiteLLM answers wrong: {why}")
        await settle(target.roots)  # the second worker may still be importing
        ctx.res.startup["litellm"] = time.perf_counter() - t0
        await run_target(ctx, target)
    finally:
        stop_tree(proc)


async def portkey_phase(ctx: Ctx) -> None:
    port, home = free_port(), ctx.logs / "portkey"
    home.mkdir(exist_ok=True)
    server = NODE_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    env = minimal_env(home) | {"NODE_ENV": "production"}
    t0 = time.perf_counter()
    proc = spawn(ctx, "portkey", ["node", str(server), f"--port={port}", "--headless"], env, home)
    try:
        await wait_http(ctx.http, f"http://127.0.0.1:{port}/", proc, 60)
        target = Target(
            "portkey",
            url=lambda d: f"http://127.0.0.1:{port}/v1/chat/completions",
            headers=lambda d: {
                "Authorization": f"Bearer {MOCK_KEY}",
                "x-portkey-provider": "openai",
                "x-portkey-custom-host": mock_base(ctx.mock_port, d),
            },
            roots=[proc.pid],
        )
        if why := await sanity(ctx.http, target):
            raise RuntimeError(f"Portkey answers wrong: {why}")
        ctx.res.startup["portkey"] = time.perf_counter() - t0
        await run_target(ctx, target)
    finally:
        stop_tree(proc)


async def pm_phase(ctx: Ctx, db: str, *, workers: int | None = None) -> None:
    """Prompt Manager with PM_WORKERS (2) API workers, both scenarios; with `workers` (1, to
    compare with Portkey's one process), its /v1 throughput points only."""
    cfg = ctx.cfg
    api_port, redis_port = free_port(), free_port()
    delays = sorted({0, *(d for d, _ in cfg.points)} - {0})
    endpoints = [
        {"name": f"mockd{d}", "base_url": mock_base(ctx.mock_port, d), "api_key": MOCK_KEY}
        for d in delays
    ]
    env = os.environ | {
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        "ENVIRONMENT": "production", "LOG_LEVEL": "warning", "LOCAL_MODEL_ENABLED": "false",
        "OPENAI_API_KEY": MOCK_KEY, "OPENAI_BASE_URL": mock_base(ctx.mock_port, 0),
        "OPENAI_COMPATIBLE_ENDPOINTS": json.dumps(endpoints),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "WORKERS": str(workers or os.environ.get("PM_WORKERS", "2")), "PORT": str(api_port),
        "ENCRYPTION_KEYS": generate_key(),
    }  # fmt: skip
    redis_proc = start_redis(ctx.kids, redis_port, str(ctx.logs))
    ctx.started.append(redis_proc)
    run_cmd(env, str(BIN / "alembic"), "upgrade", "head")
    out = run_cmd(env, str(BIN / "python"), "-m", "app", "create-user",
                  f"bench{workers or ''}@example.com", "--admin")  # fmt: skip
    key = out.split()[-1]
    if ctx.cfg.limits:  # limits that never refuse: every request pays for every check
        limits = os.environ.get(
            "PM_BENCH_LIMITS",
            "--rpm 10000000 --tpm 10000000000 --in-flight 1000000 --budget 1000000 --period month",
        )
        run_cmd(env, str(BIN / "python"), "-m", "app", "set-limits", "--user",
                f"bench{workers or ''}@example.com", *limits.split())  # fmt: skip
    pg = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}")
    others = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND datname IS DISTINCT FROM $1",
        db,
    )
    pool = int(os.environ.get("DATABASE_POOL_SIZE") or 20)
    api_workers = int(env["WORKERS"])
    writers = ["new prompts", "outcomes"] + (
        ["admissions", "settlements"] if ctx.cfg.limits else []
    )
    ctx.res.notes.append(
        f"PostgreSQL max_connections {await pg.fetchval('SHOW max_connections')}; {others} "
        "client connections to other databases were open when Prompt Manager's phase began; "
        f"its pools may open up to {2 * pool + len(writers)} per process (DATABASE_POOL_SIZE "
        f"{pool}, as many again in overflow, and the writers' own: {', '.join(writers)}) in "
        "each of its "
        f"{api_workers + 1} processes ({api_workers} API worker(s), the Celery worker)"
    )
    api = worker = None
    try:
        t0 = time.perf_counter()
        api = spawn(ctx, "pm-api", [str(BIN / "python"), "-m", "app", "serve"], env)
        await wait_http(ctx.http, f"http://127.0.0.1:{api_port}/healthz", api, 60)
        ctx.res.startup["pm"] = time.perf_counter() - t0
        health = free_port()
        worker_env = env | {"WORKER_HEALTH_PORT": str(health)}
        worker = spawn(ctx, "pm-worker", [str(BIN / "python"), "-m", "app", "worker"], worker_env)
        await wait_http(ctx.http, f"http://127.0.0.1:{health}/readyz", worker, 60)
        await settle([api.pid, worker.pid])
        auth = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{api_port}"
        v1 = Target("pm1-v1" if workers else "pm-v1", lambda d: f"{base}/v1/chat/completions",
                    lambda d: auth, [api.pid], pg, db)  # fmt: skip
        why = await sanity(ctx.http, v1)
        if why:
            missing = why.startswith("HTTP 404")
            ctx.res.unavailable[v1.key] = (
                "not available in this build (HTTP 404)" if missing else f"failing: {why}"
            )
            print(f"  {v1.key}    {ctx.res.unavailable[v1.key]}", file=sys.stderr)
        elif workers:
            await run_target(ctx, v1, stream=False, long=False)
            return
        else:
            await run_target(ctx, v1)
        accepted = Target("pm-202", lambda d: f"{base}/ai/prompts/", lambda d: auth,
                          [api.pid], pg, db, worker.pid)  # fmt: skip
        if why := await sanity(ctx.http, accepted):
            raise RuntimeError(f"POST /ai/prompts/ answers wrong: {why}")
        await drain(accepted, 30)
        for delay, clients_list in cfg.points:
            for clients in clients_list:
                ctx.res.points.append(await measure_point(ctx, accepted, delay, clients))
        await completion_latency(ctx, accepted, auth)
        if cfg.long and "pm-v1" in ctx.res.unavailable:
            await long_run(ctx, accepted)  # no /v1 yet: the long run goes to /ai/prompts/
    finally:
        for proc in (worker, api):
            if proc is not None:
                stop_tree(proc)
        stop_tree(redis_proc)
        await pg.close()


async def completion_latency(ctx: Ctx, target: Target, auth: dict[str, str]) -> None:
    """Scenario 4, submit→completed: `Prefer: wait=10` when honoured (200 instead of 202),
    else POST then GET every 2 ms until final. One client, then 16, instant upstream."""
    api = target.url(0).removesuffix("/ai/prompts/")
    async with aiohttp.ClientSession(
        headers=auth, timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(limit=0),
    ) as http:  # fmt: skip
        warm = Samples()
        for _ in range(5):
            checkpoint()
            await submit(http, api, PROMPT, warm, timeout=30, every=0.01)
        async with http.post(f"{api}/ai/prompts/", json=PROMPT,
                             headers={"Prefer": "wait=10"}) as reply:  # fmt: skip
            detail = await reply.json()
            prefer = reply.status == 200 and detail.get("status") == "completed"

        async def one(samples: Samples) -> None:
            if not prefer:
                await submit(http, api, PROMPT, samples, timeout=10, every=0.002)
                return
            t0 = time.perf_counter()
            try:
                async with http.post(f"{api}/ai/prompts/", json=PROMPT,
                                     headers={"Prefer": "wait=10"}) as reply:  # fmt: skip
                    body = await reply.json()
                    status = body.get("status") if reply.status == 200 else None
                    outcome = status or f"HTTP {reply.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            if outcome == "completed":
                samples.latency.append(time.perf_counter() - t0)
                samples.post.append(time.perf_counter() - t0)
            else:
                samples.errors[outcome] += 1

        for clients in (1, 16):
            await drain(target, ctx.cfg.drain_timeout)
            samples, left = Samples(), [ctx.cfg.latency_prompts]

            async def loop(samples: Samples = samples, left: list[int] = left) -> None:
                while left[0] > 0:
                    checkpoint()
                    left[0] -= 1
                    await one(samples)

            await asyncio.gather(*(loop() for _ in range(clients)))
            done = len(samples.latency)
            ctx.res.latency.append(
                {"clients": clients, "mode": "Prefer: wait=10" if prefer else "GET every 2 ms",
                 "prompts": done, "p50": pct(samples.latency, 0.5),
                 "p99": pct(samples.latency, 0.99), "post_p50": pct(samples.post, 0.5),
                 "polls": samples.gets / max(1, done), "errors": errors_text(samples.errors)}
            )  # fmt: skip
            print(
                f"  pm-202   submit→completed x{clients}: p50 {pct(samples.latency, 0.5):.1f} "
                f"p99 {pct(samples.latency, 0.99):.1f} ms ({'Prefer' if prefer else 'polled'})",
                file=sys.stderr,
            )


async def measure(
    cfg: argparse.Namespace, kids: Children, db: str, logs: Path, res: Results
) -> tuple[Results, list[str]]:
    install_stop_handlers()
    mock_port = free_port()
    ctx_started: list[subprocess.Popen[bytes]] = []
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        ctx = Ctx(cfg, kids, http, res, mock_port, logs, cfg.load_fn, ctx_started)
        try:
            mock = spawn(
                ctx, "mock",
                [str(BIN / "python"), "-m", "bench.mock_upstream", "--port", str(mock_port),
                 "--stream-gap-ms", f"{cfg.stream_gap_ms:g}"],
                os.environ.copy(),
            )  # fmt: skip
            await wait_http(http, f"http://127.0.0.1:{mock_port}/v1/models", mock, 30)
            phases: dict[str, Callable[[], Awaitable[None]]] = {
                "direct": lambda: direct_phase(ctx, mock),
                "litellm": lambda: litellm_phase(ctx),
                "portkey": lambda: portkey_phase(ctx),
                "pm": lambda: pm_phase(ctx, db),
                "pm1": lambda: pm_phase(ctx, db, workers=1),
            }
            for name in cfg.systems:
                res.loadavg[name] = loadavg()
                print(f"{name}: load average {res.loadavg[name]}", file=sys.stderr)
                try:
                    await phases[name]()
                except Exception as exc:  # one broken system does not lose the others
                    res.notes.append(f"**{name} failed: {exc}**")
                    print(f"{name} failed: {exc!r}", file=sys.stderr)
                    for log in sorted(logs.glob(f"{name.split('-')[0]}*.log")):
                        tail = log.read_text(errors="replace").splitlines()[-15:]
                        print(f"--- {log.name}:", *tail, sep="\n", file=sys.stderr)
            res.loadavg["end"] = loadavg()
        finally:
            for proc in reversed(ctx_started):
                stop_tree(proc)
            shutil.rmtree(LOGS, ignore_errors=True)
            shutil.copytree(logs, LOGS, ignore=shutil.ignore_patterns("*.rdb"))
    for log in sorted(logs.glob("*.log")):
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        if error := first_error(lines):
            res.notes.append(
                f"{log.stem} log ({LOGS.relative_to(ROOT)}/{log.name}): {error[0]} error(s);"
                f" 1st: `{error[1][:200]}`"
            )
    return res, []


def first_error(lines: list[str]) -> tuple[int, str] | None:
    """(tracebacks and ERROR lines, the first one's exception line) of a child's log."""
    hits = [i for i, x in enumerate(lines) if x.startswith("Traceback") or " ERROR" in x]
    if not hits:
        return None
    at = hits[0]
    if lines[at].startswith("Traceback"):  # the exception is the first unindented line after
        at = next((i for i in range(at + 1, len(lines)) if not lines[i].startswith(" ")), at)
    return len(hits), lines[at]


# --- the report -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b or a != a or b != b:
        return "-"
    r = a / b
    return (
        f"{r:,.0f}x"
        if r >= 100
        else f"{r:.1f}x"
        if r >= 10
        else f"{r:.2g}x"
        if r < 0.1
        else f"{r:.2f}x"
    )


def versions(setup: dict[str, Any], pg_version: str) -> list[str]:
    def out(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return next(iter((done.stdout or done.stderr).strip().splitlines()), "")
        return "?"

    commit = out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = out("git", "-C", str(ROOT), "status", "--porcelain", "--", "app")
    redis = out("redis-server", "--version").split()
    return [
        f"Prompt Manager: commit {commit}"
        + (" with uncommitted changes under app/" if dirty not in ("", "?") else "")
        + f"; Python {platform.python_version()}; PostgreSQL {pg_version}; Redis "
        + (redis[2].removeprefix("v=") if len(redis) > 2 else "?"),
        *(
            [
                f"LiteLLM {setup['litellm'].get('version', '?')} (`litellm[proxy]`, Python "
                + (out(str(VENVS / "litellm" / "bin" / "python"), "--version").split() or ["?"])[-1]
                + ", uvicorn, `--num_workers 2`)"
            ]
            if setup.get("litellm")
            else []
        ),
        *(
            [
                f"Portkey AI Gateway {setup['portkey'].get('version', '?')} on Node "
                + out("node", "--version").lstrip("v")
                + f" (@hono/node-server pinned to {HONO_NODE_SERVER})"
            ]
            if setup.get("portkey")
            else []
        ),
        "load generator: " + (out(setup["wrk"], "-v") if setup["wrk"] else "Python aiohttp"),
    ]


def install_note(name: str, data: dict[str, Any]) -> str:
    if data.get("this_run") is not None:
        return f"{name}: installed in this run in {data['this_run']:.0f} s"
    return f"{name}: cached (installed {data.get('date', '?')} in {data.get('seconds', '?')} s)"


def report(res: Results, cfg: argparse.Namespace, setup: dict[str, Any], pg_version: str) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?")
    nproc = len(os.sched_getaffinity(0))
    by = {(p.system, p.delay, p.clients): p for p in res.points}
    text = [
        "# Gateway benchmark: Prompt Manager, LiteLLM proxy, Portkey AI Gateway",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; command: "
        f"`.venv/bin/python -m bench.gateways{''.join(f' {a}' for a in sys.argv[1:])}`",
        f"- Machine: nproc {nproc}, {cpu}, {platform.system()} {platform.release()}; load "
        "average (1/5/15 min) when each phase began: "
        + ", ".join(f"{k} {v}" for k, v in res.loadavg.items()),
        *(f"- {line}" for line in versions(setup, pg_version)),
        f"- Each point: {cfg.warmup:g} s warm-up, then {cfg.duration:g} s measured; `wrk -t1`, "
        "closed loop, keep-alive, the same JSON body to every system (`max_tokens` 64). The "
        "load generator, the gateway, its workers, PostgreSQL, Redis and the mock share these "
        "CPUs.",
        "",
        "**LiteLLM and Portkey record nothing in a database here** (LiteLLM runs without "
        "DATABASE_URL: its Prisma-based spend logs cannot start offline; Portkey's open-source "
        "gateway has no store). **Prompt Manager commits every call** to PostgreSQL (the "
        "prompt, its attempt and its response) before it answers: its figures include that "
        "work, and the PostgreSQL column shows what the database spent on it.",
        "",
        "Scenarios: 1 = straight to the mock (the floor: what the load generator and the mock "
        "cost); 2 = LiteLLM's and Portkey's `/v1/chat/completions`; 3 = Prompt Manager's "
        "`/v1/chat/completions`; 4 = Prompt Manager's `POST /ai/prompts/` (answers 202 once "
        "the prompt is recorded and queued; a Celery worker runs it after).",
        "",
    ]
    for name, why in res.unavailable.items():
        text.append(f"- **{LABELS[name]} (scenario {SCENARIO[name]}): {why}**")
    text.append("")
    systems = [s for s in LABELS if any(p.system == s for p in res.points)]
    for delay, clients_list in cfg.points:
        upstream = "answers at once" if delay == 0 else f"answers after {delay:g} ms"
        text += [
            f"## Upstream {upstream}",
            "",
            "| System | Scen. | Clients | req/s | p50 ms | p90 ms | p99 ms | errors "
            "| gateway CPU ms/req | PostgreSQL CPU ms/req |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for system in systems:
            for clients in clients_list:
                if (p := by.get((system, delay, clients))) is None:
                    continue
                error_text = errors_text(Counter(p.errors))
                text.append(
                    f"| {LABELS[system]} | {SCENARIO[system]} | {clients} | {p.rps:,.0f} | "
                    f"{fmt(p.p50)} | {fmt(p.p90)} | {fmt(p.p99)} | {error_text} | "
                    f"{fmt(p.cpu_ms, 3)} | {fmt(p.pg_ms, 3)} |"
                )
        text.append("")
        for p in res.points:
            if p.delay == delay and p.note and p.system != "pm-202":
                text.append(f"- {LABELS[p.system]}, {p.clients} clients: {p.note}")
        text.append("")
    if any(p.system == "pm-202" for p in res.points):
        text += [
            "Scenario 4, what the 202s left to do: the Celery worker ran every accepted "
            "prompt after the window (the next point starts once it has).",
            "",
            "| Upstream ms | Clients | worker CPU ms/prompt | PostgreSQL CPU ms/prompt, whole "
            "life | after the window |",
            "|---:|---:|---:|---:|---|",
        ]
        for p in res.points:
            if p.system == "pm-202":
                text.append(
                    f"| {p.delay} | {p.clients} | {fmt(p.worker_ms, 3)} | {fmt(p.pg_ms, 3)} | "
                    f"{p.note} |"
                )
        text.append("")
    text += [
        "## Ratios within this run",
        "",
        "ours = Prompt Manager `/v1/chat/completions` (scenario 3), with as many processes as "
        "the peer: 2 API workers against LiteLLM's 2 workers, 1 against Portkey's one Node "
        "process (its 2-worker figures when the 1-worker run is missing). req/s: above 1x "
        "means ours serves more; latency and CPU: below 1x means ours is quicker or cheaper. "
        '"÷ direct" compares with the mock alone (scenario 1).',
        "",
        "| Upstream ms | Clients | metric | ours ÷ LiteLLM (2 workers each) | ours ÷ Portkey "
        "(1 process each) | LiteLLM ÷ direct | Portkey ÷ direct | ours ÷ direct |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for delay, clients_list in cfg.points:
        for clients in clients_list:
            got = {s: by.get((s, delay, clients)) for s in LABELS}
            for metric in ("rps", "p50", "p99", "cpu_ms"):

                def v(system: str, metric: str = metric, got: dict[str, Any] = got) -> Any:
                    point = got.get(system)
                    return getattr(point, metric) if point else None

                direct = metric in ("rps", "p50", "p99")
                text.append(
                    f"| {delay} | {clients} | {metric.replace('cpu_ms', 'CPU/req')} | "
                    f"{ratio(v('pm-v1'), v('litellm'))} | "
                    f"{ratio(v('pm1-v1') or v('pm-v1'), v('portkey'))} | "
                    f"{ratio(v('litellm'), v('direct')) if direct else '-'} | "
                    f"{ratio(v('portkey'), v('direct')) if direct else '-'} | "
                    f"{ratio(v('pm-v1'), v('direct')) if direct else '-'} |"
                )
    text.append("")
    if res.latency:
        text += [
            "## Scenario 4: submit → completed (Prompt Manager, Celery mode, instant upstream)",
            "",
            "| Clients | how the client learns it is done | prompts | p50 ms | p99 ms "
            "| POST alone p50 ms | GET polls per prompt | errors |",
            "|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for row in res.latency:
            text.append(
                f"| {row['clients']} | {row['mode']} | {row['prompts']} | {fmt(row['p50'], 1)} "
                f"| {fmt(row['p99'], 1)} | {fmt(row['post_p50'], 1)} | {row['polls']:.1f} "
                f"| {row['errors']} |"
            )
        text.append("")
    if res.ttft:
        text += [
            "## Scenario 5: streaming, time to first token",
            "",
            f"{cfg.ttft_calls} sequential calls per system after 3 warm-up calls, "
            "`stream: true` with `stream_options.include_usage`; the mock sends the role and "
            f"first word at once, then one word every {cfg.stream_gap_ms:g} ms (8 words), a "
            "usage chunk and `[DONE]`. TTFT = request sent → first chunk with content, as an "
            "aiohttp client in the benchmark process sees it.",
            "",
            "| System | TTFT p50 ms | TTFT p99 ms | whole stream p50 ms | content chunks "
            "per call | calls with a usage chunk | text wrong | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in res.ttft:
            text.append(
                f"| {LABELS[row['system']]} | {fmt(row['p50'])} | {fmt(row['p99'])} | "
                f"{fmt(row['whole_p50'], 1)} | {row['chunks']:.1f} | "
                f"{row['usage']}/{row['calls']} | {row['wrong_text']} | "
                f"{errors_text(Counter(row['errors']))} |"
            )
        text.append("")
    if res.memory:
        text += [
            f"## Memory and CPU over a long run ({cfg.long:,} requests, {cfg.long_clients} "
            "clients, instant upstream)",
            "",
            "VmRSS summed over the system's processes (parent and workers). A leak shows as "
            "growth between the first tenth and the end.",
            "",
            "| System | processes | RSS idle after start MiB | before the run | after the "
            "first tenth | after all | growth, tenth → all | CPU ms/req over the run | req/s "
            "| errors | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in res.memory:
            text.append(
                f"| {LABELS[row['system']]} | {row['processes']} | {fmt(row['rss_idle'], 0)} | "
                f"{fmt(row['rss_before'], 0)} | {fmt(row['rss_first'], 0)} "
                f"({row['first']:,} req) | {fmt(row['rss_last'], 0)} ({row['requests']:,} req)"
                f" | {row['rss_last'] - row['rss_first']:+.1f} MiB | {fmt(row['cpu_ms'], 3)} | "
                f"{row['rps']:,.0f} | {errors_text(Counter(row['errors']))} | "
                f"{row['note'].lstrip('; ')} |"
            )
        text.append("")
    text += [
        "## Set-up and caveats",
        "",
        *(
            f"- {install_note(k, setup[k])}"
            for k in ("litellm", "portkey", "tools")
            if setup.get(k)
        ),
        *(f"- {note}" for note in setup["notes"]),
        *(
            ["- Start-up (spawn → answering): " + ", ".join(starts)]
            if (starts := [f"{k} {v:.1f} s" for k, v in res.startup.items() if ":" not in k])
            else []
        ),
        "- The mock (`bench.mock_upstream`, uvloop, precomputed answers) answers `/v1` at "
        'once; its own figures are scenario 1. Its CPU per request is the "gateway CPU" of '
        "the direct rows.",
        "- Prompt Manager: `python -m app serve`, WORKERS=2, ENVIRONMENT=production, LOG_LEVEL="
        "warning, Celery mode (CELERY_BROKER_URL = a redis-server of this script's own) with "
        "one `python -m app worker`; `/v1/chat/completions` runs in the API process itself. "
        "API key checked on every call. Gateway CPU = `serve` and its two uvicorn workers. "
        "`Prompt Manager /v1, 1 worker`: the same with WORKERS=1 (`serve` is then the one "
        "uvicorn process), /v1 points only, for the comparison with Portkey's one process.",
        "- LiteLLM: `litellm --config … --num_workers 2`, master key set (checked on every "
        "call), no database (so no spend logs, no key store), LITELLM_LOCAL_MODEL_COST_MAP=True"
        " (never reaches the internet), LITELLM_LOG=ERROR. Gateway CPU = the parent, its two "
        "workers and multiprocessing's resource tracker.",
        "- Portkey: `node build/start-server.js --port=N --headless`, one process (its CLI "
        "has no worker option), routed per request with `x-portkey-provider: openai` and "
        "`x-portkey-custom-host`; no auth of its own. It listens on all interfaces (its CLI "
        "has no host option); only 127.0.0.1 is used.",
        "- Percentiles are wrk's (per-request latency, µs resolution); errors = non-2xx "
        "answers plus socket errors (connect, read, write, timeout after 10 s).",
        *(f"- {note}" for note in res.notes),
        "",
    ]
    return "\n".join(text)


def plot(res: Results, cfg: argparse.Namespace, setup: dict[str, Any]) -> list[str]:
    """PNGs via bench/gateways_plot.py in the bench-only tools venv (matplotlib)."""
    python = VENVS / "tools" / "bin" / "python"
    if cfg.no_plot or "tools" not in setup:
        return []
    done = subprocess.run(
        [str(python), str(BENCH / "gateways_plot.py"), str(DATA), str(RESULTS)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode:
        setup["notes"].append(f"plots failed: {done.stderr.strip()[-300:]}")
        return []
    return done.stdout.split()


def parse_points(text: str) -> list[tuple[int, list[int]]]:
    """'0:1,16,64 50:1,16,64,256' → [(0, [1, 16, 64]), (50, [1, 16, 64, 256])]."""
    out = []
    for item in text.split():
        delay, _, clients = item.partition(":")
        out.append((int(delay), [int(c) for c in clients.split(",") if c]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 s points, fewer concurrencies, shorter long run"
    )
    parser.add_argument("--duration", type=int, help="measured seconds per point (8; quick 3)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per point (2; quick 1)")
    parser.add_argument("--points", help=f"'delay_ms:clients,… …' (default '{FULL_POINTS}', "
                        f"quick '{QUICK_POINTS}')")  # fmt: skip
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")  # fmt: skip
    parser.add_argument(
        "--long", type=int, help="long-run requests (100,000; quick 10,000; 0: skip)"
    )
    parser.add_argument("--long-clients", type=int, default=64)
    parser.add_argument(
        "--long-timeout", type=float, help="cap on each system's long run, s (900; quick 90)"
    )
    parser.add_argument("--ttft-calls", type=int, help="streamed calls per system (100; quick 30)")
    parser.add_argument("--stream-gap-ms", type=float, default=5.0)
    parser.add_argument(
        "--latency-prompts", type=int, help="scenario 4 prompts per concurrency (200; quick 40)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, help="s to wait for the worker (60; quick 30)"
    )
    parser.add_argument("--litellm-version", default=LITELLM_VERSION)
    parser.add_argument("--portkey-version", default=PORTKEY_VERSION)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--tools",
        action="store_true",
        help="every chat declares a function tool (tool_choice auto)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="Prompt Manager's bench user gets rate limits, an in-flight limit and a budget, "
        "all too high to refuse anything: what the checks cost",
    )
    cfg = parser.parse_args()
    if cfg.tools:
        BODY_EXTRA.update(tools=TOOLS, tool_choice="auto")
    quick = cfg.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    cfg.duration = pick(cfg.duration, 8, 3)
    cfg.warmup = pick(cfg.warmup, 2, 1)
    cfg.points = parse_points(pick(cfg.points, FULL_POINTS, QUICK_POINTS))
    cfg.long = pick(cfg.long, 100_000, 10_000)
    cfg.ttft_calls = pick(cfg.ttft_calls, 100, 30)
    cfg.long_timeout = pick(cfg.long_timeout, 900.0, 90.0)
    cfg.latency_prompts = pick(cfg.latency_prompts, 200, 40)
    cfg.drain_timeout = pick(cfg.drain_timeout, 60.0, 30.0)
    cfg.systems = [s.strip() for s in cfg.systems.split(",") if s.strip()]
    if unknown := set(cfg.systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")

    setup: dict[str, Any] = {"notes": []}
    try:
        wrk, note = ensure_wrk()
        setup["wrk"] = wrk
        if note:
            setup["notes"].append(note)
        if "litellm" in cfg.systems:
            setup["litellm"] = ensure_venv(
                "litellm", f"litellm[proxy]=={cfg.litellm_version}", "litellm"
            )
        if "portkey" in cfg.systems:
            setup["portkey"] = ensure_portkey(cfg.portkey_version)
        if not cfg.no_plot:
            try:
                setup["tools"] = ensure_venv(
                    "tools", f"matplotlib=={MATPLOTLIB_VERSION}", "matplotlib"
                )
            except (RuntimeError, subprocess.SubprocessError) as exc:
                setup["notes"].append(f"no plots: {exc}")
    except KeyboardInterrupt:
        sys.exit("interrupted during set-up (a half-made install is redone next time)")
    setup.setdefault("litellm", {})
    setup.setdefault("portkey", {})

    async def load(
        url: str, headers: dict[str, str], body: dict[str, Any], clients: int,
        seconds: float, *, limit: int = 0,
    ) -> Load:  # fmt: skip
        if wrk:
            return await wrk_load(wrk, url, headers, body, clients, seconds, limit=limit)
        return await py_load(url, headers, body, clients, seconds, limit=limit)

    cfg.load_fn = load
    points = sum(len(c) for _, c in cfg.points)
    per_system = points * (cfg.warmup + cfg.duration + 3) + cfg.long_timeout + 180
    time_limit = 600 + len(cfg.systems) * per_system + points * cfg.drain_timeout
    res = Results()
    started = time.perf_counter()

    def write(results: Results, _notes: list[str], pg_version: str) -> str:
        # Everything measured goes to the JSON first: a failing report loses nothing.
        data = asdict(results) | {"labels": LABELS, "delays": [d for d, _ in cfg.points]}
        DATA.write_text(json.dumps(data, indent=1, default=str))
        images = plot(results, cfg, setup)
        try:
            text = report(results, cfg, setup, pg_version)
        except Exception:
            text = (
                "# Gateway benchmark: the report failed\n\nThe figures are in "
                f"{DATA.relative_to(ROOT)}.\n\n```\n{traceback.format_exc()}```\n"
            )
        if images:
            text += "\n## Plots\n\n" + "".join(
                f"![{Path(i).stem}]({Path(i).name})\n" for i in images
            )
        return text + f"\nWhole run: {time.perf_counter() - started:.0f} s.\n"

    try:
        asyncio.run(
            run_benchmark(
                time_limit,
                lambda kids, db, logs: measure(cfg, kids, db, logs, res),
                write,  # type: ignore[arg-type]  # our rows are a Results
                REPORT,
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM
        sys.exit("interrupted: processes stopped, database dropped")


if __name__ == "__main__":
    main()
