"""What our provider adapters cost over each vendor's SDK and over a raw aiohttp POST.

Method. The wire-format mocks (`tests.mocks.<vendor>_server`) run in their own processes on free
loopback ports, so their CPU is not counted here. For openai, gemini and anthropic, three paths
(four for openai) make the same non-streamed call ("hello", max_tokens 64) to that vendor's mock:

- adapter: our `Provider.complete()` on the client our `build_client()` makes (the SDK);
- direct (openai only): `OpenAIHTTPProvider.complete()`, our adapter that speaks the wire
  format itself over its HTTP/1.1 client, `app.providers.http1` (OPENAI_TRANSPORT=direct, the
  default);
- SDK: the vendor SDK as a user creates it (`openai.AsyncOpenAI(...)`, `genai.Client(...).aio`,
  `anthropic.AsyncAnthropic(...)`), with its default transport;
- raw: an aiohttp POST of the same JSON body, the answer parsed with `json.loads` (the floor).

Each path makes 50 warm-up calls (answers checked), then 1,000 sequential calls in 5 rounds of
200; the order of the paths rotates every round, so machine noise hits all alike. Wall and
process CPU (`time.process_time`, all our threads) per 1,000 calls are the median round scaled
up; mean/p50/p99 come from all 1,000 per-call latencies (nearest rank). Concurrency: 64 tasks
share 2,000 calls per path, in 2 rotating rounds of 1,000 after a burst that opens the
connections; calls/s is a round's calls over its median wall time.

Import cost: 3 times (`--import-runs`), interleaved, a fresh interpreter per module (`openai`,
`google.genai`, `anthropic`, `app.providers.<vendor>`, `app.providers.openai_http`) reads
VmRSS from /proc/self/status, imports the module (wall time), reads it again, makes a client
and one call to the mock, and reads it a third time; medians are reported. Its baseline holds
this file's stdlib imports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
RESULTS = ROOT / "bench" / "results" / "providers_overhead.md"
PACKAGES = ("openai", "google-genai", "anthropic", "aiohttp", "httpx2", "pydantic", "uvloop")
VENDORS = ("openai", "gemini", "anthropic")
SDKS = {"openai": "openai", "gemini": "google.genai", "anthropic": "anthropic"}
MODELS = {"openai": "gpt-4o-mini", "gemini": "gemini-2.5-flash", "anthropic": "claude-haiku-4-5"}
KEYS = {"openai": "sk-bench-openai", "gemini": "AIza-bench-gemini", "anthropic": "sk-ant-bench"}
PROMPT, ANSWER, MAX_TOKENS = "hello", "echo: hello", 64
PATHS = ("adapter", "SDK", "raw")
EXTRA_PATHS = {"openai": ("direct",)}  # after "adapter"
RAW_TEXT: dict[str, Callable[[Any], str]] = {
    "openai": lambda r: r["choices"][0]["message"]["content"],
    "gemini": lambda r: r["candidates"][0]["content"]["parts"][0]["text"],
    "anthropic": lambda r: r["content"][0]["text"],
}


@dataclass(frozen=True)
class Route:
    call: Callable[[], Awaitable[Any]]  # one call: what is timed
    text: Callable[[Any], str]  # the answer's text, from what `call` returned
    close: Callable[[], Awaitable[object]]


@dataclass
class Sample:
    walls: list[float] = field(default_factory=list)  # s, per round
    cpus: list[float] = field(default_factory=list)  # s, per round
    latency: list[float] = field(default_factory=list)  # s, per call


def rss_mib() -> float:
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(x.split()[1]) / 1024 for x in lines if x.startswith("VmRSS:"))


def paths(vendor: str) -> tuple[str, ...]:
    return PATHS[:1] + EXTRA_PATHS.get(vendor, ()) + PATHS[1:]


def raw_request(vendor: str, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and JSON body of the request the SDK sends (checked against the mocks)."""
    key, model, user = KEYS[vendor], MODELS[vendor], {"role": "user", "content": PROMPT}
    if vendor == "openai":
        body = {"model": model, "messages": [user], "max_tokens": MAX_TOKENS}
        return f"{url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}, body
    if vendor == "gemini":
        contents = [{"parts": [{"text": PROMPT}], "role": "user"}]
        body = {"contents": contents, "generationConfig": {"maxOutputTokens": MAX_TOKENS}}
        return f"{url}/v1/models/{model}:generateContent", {"x-goog-api-key": key}, body
    body = {"model": model, "max_tokens": MAX_TOKENS, "messages": [user]}
    return f"{url}/v1/messages", {"x-api-key": key, "anthropic-version": "2026-10-21"}, body


def build(vendor: str, path: str, url: str) -> Route:
    """One path to one mock; call it inside the running loop. It imports lazily, so that a
    child measuring one module's import cost loads nothing else."""
    key, model = KEYS[vendor], MODELS[vendor]
    messages: Any = [{"role": "user", "content": PROMPT}]
    if path == "adapter":
        from app.providers.base import CompletionRequest

        mod: Any = importlib.import_module(f"app.providers.{vendor}")
        base_url = f"{url}/v1" if vendor == "openai" else url
        client = mod.build_client(api_key=key, base_url=base_url, timeout=30, connect_timeout=5)
        extra = {"default_max_tokens": MAX_TOKENS} if vendor == "anthropic" else {}
        name = "OpenAI" if vendor == "openai" else vendor.title()
        provider = getattr(mod, f"{name}Provider")(client, **extra)
        request = CompletionRequest(model=model, messages=messages, max_tokens=MAX_TOKENS)
        return Route(partial(provider.complete, request), lambda c: c.text, provider.aclose)
    if path == "direct":
        from app.providers.base import CompletionRequest
        from app.providers.openai_http import OpenAIHTTPProvider

        direct = OpenAIHTTPProvider(
            api_key=key, base_url=f"{url}/v1", timeout=30, connect_timeout=5
        )
        request = CompletionRequest(model=model, messages=messages, max_tokens=MAX_TOKENS)
        return Route(partial(direct.complete, request), lambda c: c.text, direct.aclose)
    if path == "raw":
        import aiohttp

        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        target, headers, body = raw_request(vendor, url)

        async def post() -> Any:
            async with session.post(target, json=body, headers=headers) as reply:
                reply.raise_for_status()
                return json.loads(await reply.read())

        return Route(post, RAW_TEXT[vendor], session.close)
    sdk: Any = importlib.import_module(SDKS[vendor])
    if vendor == "openai":
        oa = sdk.AsyncOpenAI(api_key=key, base_url=f"{url}/v1")
        ask = partial(oa.chat.completions.create, model=model, messages=messages)
        ask = partial(ask, max_tokens=MAX_TOKENS)
        return Route(ask, lambda r: r.choices[0].message.content, oa.close)
    if vendor == "gemini":
        options = sdk.types.HttpOptions(base_url=url, api_version="v1")
        gc = sdk.Client(api_key=key, http_options=options)
        config = sdk.types.GenerateContentConfig(max_output_tokens=MAX_TOKENS)

        async def close() -> None:
            await gc.aio.aclose()
            gc.close()

        ask = partial(gc.aio.models.generate_content, model=model, contents=PROMPT, config=config)
        return Route(ask, lambda r: r.text, close)
    ac = sdk.AsyncAnthropic(api_key=key, base_url=url)
    ask = partial(ac.messages.create, model=model, max_tokens=MAX_TOKENS, messages=messages)
    return Route(ask, lambda r: r.content[0].text, ac.close)


async def check(route: Route, calls: int) -> None:
    for _ in range(calls):
        if (text := route.text(await route.call())) != ANSWER:
            raise RuntimeError(f"unexpected answer {text!r}")


async def one_call(module: str, url: str) -> None:
    """For the import children: a client for `module` (an SDK, or our adapter), one call."""
    name = module.rsplit(".", 1)[-1]
    vendor = {"genai": "gemini", "openai_http": "openai"}.get(name, name)
    path = "adapter" if module.startswith("app.") else "SDK"
    route = build(vendor, "direct" if name == "openai_http" else path, url)
    try:
        await check(route, 1)
    finally:
        await route.close()


async def one_round(route: Route, calls: int, width: int, sample: Sample) -> None:
    """`width` tasks make `calls` calls between them (width 1: one after the other)."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            await route.call()
            sample.latency.append(time.perf_counter() - start)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    sample.walls.append(time.perf_counter() - t0)
    sample.cpus.append(time.process_time() - cpu0)


async def rounds(routes: dict[str, Route], calls: int, n: int, width: int) -> dict[str, Sample]:
    names = list(routes)
    out = {name: Sample() for name in names}
    for r in range(n):
        turn = r % len(names)
        for name in names[turn:] + names[:turn]:  # rotate the order every round
            await one_round(routes[name], calls // n, width, out[name])
    return out


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of seconds, in ms."""
    ordered = sorted(values)
    return ordered[max(0, -int(-q * len(ordered) // 1) - 1)] * 1000


def md(*cells: object, head: bool = False) -> str:
    return f"| {' | '.join(map(str, cells))} |\n" + (md(*["---"] * len(cells)) if head else "")


def seq_rows(vendor: str, got: dict[str, Sample], scale: float) -> str:
    wall = {n: statistics.median(s.walls) * scale for n, s in got.items()}
    cpu = {n: statistics.median(s.cpus) * scale for n, s in got.items()}
    rows = ""
    for n, s in got.items():
        spread = f"{min(s.walls) * scale:.2f}-{max(s.walls) * scale:.2f}"
        lat = f"{statistics.fmean(s.latency) * 1000:.2f} / {pct(s.latency, 0.5):.2f}"
        versus = f"{wall['adapter'] / wall[n]:.2f}, {cpu['adapter'] / cpu[n]:.2f}"
        rows += md(
            vendor, n, f"{wall[n]:.2f} s ({spread})", f"{cpu[n]:.2f} s",
            f"{lat} / {pct(s.latency, 0.99):.2f} ms", "-" if n == "adapter" else versus,
        )  # fmt: skip
    return rows


def conc_rows(vendor: str, got: dict[str, Sample], per_round: int) -> str:
    rate = {n: per_round / statistics.median(s.walls) for n, s in got.items()}
    rows = ""
    for n, s in got.items():
        cpu = statistics.median(s.cpus) / per_round * 1000
        rows += md(
            vendor, n, f"{rate[n]:,.0f}", f"{cpu:.2f} ms",
            f"{pct(s.latency, 0.5):.1f} / {pct(s.latency, 0.99):.1f} ms",
            "-" if n == "adapter" else f"{rate['adapter'] / rate[n]:.2f}",
        )  # fmt: skip
    return rows


async def measure_calls(urls: dict[str, str], args: argparse.Namespace) -> tuple[str, str]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # closes clients
    seq = md(
        "Provider", "Path", "wall / 1,000 calls (rounds min-max)", "CPU / 1,000 calls",
        "mean / p50 / p99 per call", "adapter ÷ this: wall, CPU", head=True,
    )  # fmt: skip
    conc = md(
        "Provider", "Path", "calls/s", "CPU per call", "p50 / p99", "adapter ÷ this", head=True
    )
    for vendor in VENDORS:
        routes = {name: build(vendor, name, urls[vendor]) for name in paths(vendor)}
        try:
            for route in routes.values():
                await check(route, args.warmup)
            got = await rounds(routes, args.calls, args.rounds, 1)
            seq += seq_rows(vendor, got, 1000 / (args.calls // args.rounds))
            for route in routes.values():  # opens the connections
                await one_round(route, 2 * args.width, args.width, Sample())
            got = await rounds(routes, args.total, args.conc_rounds, args.width)
            conc += conc_rows(vendor, got, args.total // args.conc_rounds)
        finally:
            for route in routes.values():
                await route.close()
    return seq, conc


CHILD = """import asyncio, importlib, json, sys, time
from bench.providers_overhead import one_call, rss_mib
before, t0 = rss_mib(), time.perf_counter()
importlib.import_module(sys.argv[1])
took, imported = time.perf_counter() - t0, rss_mib()
asyncio.run(one_call(sys.argv[1], sys.argv[2]))
print(json.dumps([took * 1000, before, imported, rss_mib()]))
"""


def measure_imports(urls: dict[str, str], runs: int) -> str:
    modules = {**{m: v for v, m in SDKS.items()}, **{f"app.providers.{v}": v for v in VENDORS}}
    modules["app.providers.openai_http"] = "openai"
    got: dict[str, list[list[float]]] = {m: [] for m in modules}
    for _ in range(runs):  # interleaved, so that noise hits all modules alike
        for module, vendor in modules.items():
            done = subprocess.run(
                [PYTHON, "-c", CHILD, module, urls[vendor]],
                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"the child for {module} failed:\n{done.stderr[-2000:]}")
            got[module].append(json.loads(done.stdout.splitlines()[-1]))
    text = md(
        "Module", f"import wall, median of {runs} (min-max)", "RSS before", "+ import",
        "+ client and 1 call", "RSS after the call", head=True,
    )  # fmt: skip
    for module, rows in got.items():
        took, before, imported, called = (statistics.median(r[i] for r in rows) for i in range(4))
        low, high = min(r[0] for r in rows), max(r[0] for r in rows)
        text += md(
            f"`{module}`", f"{took:,.0f} ms ({low:,.0f}-{high:,.0f})", f"{before:.1f} MiB",
            f"+{imported - before:.1f} MiB", f"+{called - imported:.1f} MiB", f"{called:.1f} MiB",
        )  # fmt: skip
    return text


def start_mock(vendor: str, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m tests.mocks.<vendor>_server` in its own session (Ctrl-C reaches only us)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    args = ["-m", f"tests.mocks.{vendor}_server", "--port", str(port), "--api-key", KEYS[vendor]]
    with (logs / f"{vendor}.log").open("wb") as log:
        proc = subprocess.Popen(
            [PYTHON, *args], cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
    for _ in range(400):  # up to 20 s
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    tail = (logs / f"{vendor}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"mock {vendor} did not come up (exit {proc.poll()}):\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the Ctrl-C path: the finally blocks still run


OPTIONS = (  # flag, default, help
    ("--calls", 1000, "sequential calls per path"),
    ("--rounds", 5, "rounds the sequential calls are split into"),
    ("--warmup", 50, "warm-up calls per path"),
    ("--width", 64, "calls in flight at the concurrency point"),
    ("--total", 2000, "concurrent calls per path"),
    ("--conc-rounds", 2, "rounds the concurrent calls are split into"),
    ("--import-runs", 3, "fresh interpreters per module"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default, help_ in OPTIONS:
        parser.add_argument(flag, type=int, default=default, help=help_)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    mocks: list[subprocess.Popen[bytes]] = []
    load, t0 = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pm_bench_") as logs:
        try:
            urls = {}
            for vendor in VENDORS:
                proc, urls[vendor] = start_mock(vendor, Path(logs))
                mocks.append(proc)
            run = importlib.import_module("uvloop").run if args.loop == "uvloop" else asyncio.run
            seq, conc = run(asyncio.wait_for(measure_calls(urls, args), 240))
            t1 = time.perf_counter()
            signal.signal(signal.SIGTERM, interrupt)  # the loop's handler went with the loop
            imports = measure_imports(urls, args.import_runs)
        except (KeyboardInterrupt, asyncio.CancelledError):
            sys.exit("interrupted: the mock processes were stopped")
        finally:
            for proc in mocks:
                stop(proc)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?")
    text = (
        "# Provider adapters: overhead over the vendor SDKs and raw HTTP\n\n"
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; command: `.venv/bin/python -m "
        f"bench.providers_overhead{''.join(f' {a}' for a in sys.argv[1:])}`\n"
        f"- Machine: nproc {len(os.sched_getaffinity(0))}, {cpu}, {platform.system()} "
        f"{platform.release()}; load average (1 min) {load:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at the end\n"
        f"- Python {platform.python_version()}, event loop {args.loop}; "
        + ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)
        + f"\n- Took {t1 - t0:.0f} s for the calls, {time.perf_counter() - t1:.0f} s for imports\n"
        f"\n## Sequential: {args.warmup} warm-up calls, then {args.calls:,} per path in "
        f"{args.rounds} rotating rounds\n\n{seq}\n## Concurrency: {args.width} in flight, "
        f"{args.total:,} calls per path in {args.conc_rounds} rotating rounds\n\n{conc}\n"
        f"## Import and memory: a fresh interpreter per module\n\n{imports}"
    )
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(f"written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
