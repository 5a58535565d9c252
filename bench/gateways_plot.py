"""Plots for bench/gateways.py: throughput and p99 per concurrency, one line per system.

Runs in the bench-only venv bench/.venvs/tools (matplotlib is no dependency of the project):
`bench/.venvs/tools/bin/python bench/gateways_plot.py bench/results/gateways.json bench/results`.
Prints the paths of the PNGs it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {
    "direct": ("tab:gray", ":"),
    "litellm": ("tab:red", "-"),
    "portkey": ("tab:purple", "-"),
    "pm-v1": ("tab:blue", "-"),
    "pm1-v1": ("tab:blue", "-."),
    "pm-202": ("tab:cyan", "--"),
}
METRICS = {"rps": ("requests/s", "throughput"), "p99": ("p99 latency, ms", "p99")}


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    points, labels, delays = data["points"], data["labels"], data["delays"]
    written = []
    for metric, (axis, name) in METRICS.items():
        fig, axes = plt.subplots(1, len(delays), figsize=(5 * len(delays), 4), squeeze=False)
        for ax, delay in zip(axes[0], delays, strict=True):
            for system, (colour, line) in STYLE.items():
                mine = sorted(
                    (p["clients"], p[metric])
                    for p in points
                    if p["system"] == system and p["delay"] == delay
                )
                if not mine:
                    continue
                xs, ys = zip(*mine, strict=True)
                ax.plot(xs, ys, line, marker="o", color=colour, label=labels[system])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ticks = sorted({p["clients"] for p in points if p["delay"] == delay})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(axis)
            upstream = "instant" if delay == 0 else f"{delay} ms"
            ax.set_title(f"upstream {upstream}")
            ax.grid(True, which="both", alpha=0.3)
        handles, names = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:  # a system missing from the first panel still gets its entry
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in names:
                    handles.append(handle)
                    names.append(label)
        fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), fontsize=8)
        fig.suptitle(f"Gateways: {name} (higher is better)" if metric == "rps" else
                     f"Gateways: {name} (lower is better)")  # fmt: skip
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = out / f"gateways_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    print(" ".join(written))


if __name__ == "__main__":
    main()
