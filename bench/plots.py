"""The benchmark suite's plots: PNGs in docs/img/ from the figures in bench/results/.

Run after the benchmarks (`make bench` runs it last); each plot is drawn from the
results file it needs and skipped, with a note, when that file is missing. Every plot
shows our figure next to the baseline measured in the same run.

    .venv/bin/python bench/plots.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import RESULTS, ROOT

IMG = ROOT / "docs" / "img"
OURS, FLOOR, OTHER = "#1f6feb", "#8c959f", "#d29922"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def subtitle(figures: dict[str, Any]) -> str:
    return (f"{figures.get('machine_cpus', '?')} vCPU, {figures.get('machine_cpu_model', '')}, "
            f"load {figures.get('load_at_start', figures.get('machine_load1_at_start', '?'))}")


def e2e_latency(plt: Any, figures: dict[str, Any]) -> list[Path]:
    results = figures["results"]
    rates = [str(r["rate"]) for r in results]
    series = [("accepted -> watcher", "p50_ms", "p99_ms", OURS),
              ("REST sent -> watcher", "rest_p50_ms", "rest_p99_ms", OTHER),
              ("floor: bare XADD..WebSocket chain", "floor_p50_ms", "floor_p99_ms", FLOOR)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.26
    for i, (label, p50, p99, color) in enumerate(series):
        xs = [j + (i - 1) * width for j in range(len(rates))]
        p50s = [max(r[p50] or 0, 0.01) for r in results]
        p99s = [max(r[p99] or 0, 0.01) for r in results]
        ax.bar(xs, p50s, width, color=color, label=f"{label} p50")
        ax.scatter(xs, p99s, color=color, marker="_", s=400, linewidths=2,
                   label=f"{label} p99")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rates)), [f"{r}/s offered\n({res['accepted_per_s']:.0f}/s taken)"
                                      for r, res in zip(rates, results, strict=True)])
    ax.set_ylabel("ms (log scale)")
    ax.axhline(2.0, color="green", linestyle=":", linewidth=1)
    ax.text(len(rates) - 0.5, 2.1, "goal p50 2 ms", color="green", ha="right", fontsize=8)
    ax.set_title(f"Order -> trade on a WebSocket watcher ({figures['watchers']} watchers)\n"
                 f"{subtitle(figures)}", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    paths = [IMG / "e2e_latency.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    stages = ["client_to_api", "api_before_enqueue", "enqueue_to_match", "match", "commit",
              "commit_to_gateway", "gateway", "gateway_to_watcher"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    colors = plt.get_cmap("tab10").colors
    width = 0.8 / len(results)
    for j, r in enumerate(results):
        # A stage's median can be <= 0 where two processes' clocks meet (the gateway may
        # get the update before the engine's commit call returns): drawn at the bottom.
        values = [max(0.005, (r["stages"].get(name) or {}).get("p50_ms") or 0.0)
                  for name in stages]
        ax.bar([k + (j - (len(results) - 1) / 2) * width for k in range(len(stages))],
               values, width, color=colors[j % 10],
               label=f"{r['rate']}/s offered ({r['accepted_per_s']:.0f}/s taken)")
    ax.set_xticks(range(len(stages)), [name.replace("_", "\n") for name in stages],
                  fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms, median over traced orders (log)")
    ax.set_title("Where an order's time goes: REST request sent -> trade read by a watcher",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(IMG / "e2e_stages.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def scaling(plt: Any, figures: dict[str, Any]) -> list[Path]:
    counts = list(figures["orders_per_s_by_pairs"])
    aggregate = [figures["orders_per_s_by_pairs"][n] / 1000 for n in counts]
    per_pair = [figures["per_pair_orders_per_s_by_pairs"][n] / 1000 for n in counts]
    cores = [figures["engine_cores_by_pairs"][n] + figures["redis_cores_by_pairs"][n]
             for n in counts]
    others = [figures.get("other_cores_by_pairs", {}).get(n, 0.0) for n in counts]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(counts, aggregate, marker="o", color=OURS, label="all pairs, orders/s")
    ax.plot(counts, per_pair, marker="s", color=OTHER, label="median pair, orders/s")
    ax.axhline(figures["goal_per_pair_orders_per_s"] / 1000, color="green", linestyle=":",
               linewidth=1, label="goal for one pair")
    ax.set_xlabel("pairs (one engine process each) on 3 masters")
    ax.set_ylabel("thousand orders/s")
    ax.set_ylim(bottom=0)
    second = ax.twinx()
    second.bar(counts, cores, alpha=0.25, color=FLOOR, label="cores: engines + Redis")
    second.bar(counts, others, bottom=cores, alpha=0.12, color=OTHER, hatch="//",
               label="cores: other processes (shared machine)")
    second.axhline(figures["cores"], color=FLOOR, linestyle="--", linewidth=1)
    second.set_ylabel(f"cores busy (machine has {figures['cores']})")
    second.set_ylim(0, figures["cores"] * 1.25)
    lines = ax.get_legend_handles_labels()
    bars = second.get_legend_handles_labels()
    ax.legend(lines[0] + bars[0], lines[1] + bars[1], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.set_title(f"Matching throughput by pairs, through Redis Cluster\n{subtitle(figures)}",
                 fontsize=10)
    fig.tight_layout()
    path = IMG / "scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def rest_capacity(plt: Any, figures: dict[str, Any]) -> list[Path]:
    levels = [int(c) for c in str(figures["concurrency_levels"]).split(",")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for prefix, label, color in (("", "signed orders (API)", OURS),
                                 ("redis_", "bare FastAPI + 1 Redis round trip", OTHER),
                                 ("const_", "bare FastAPI, constant", FLOOR)):
        left.plot(levels, [figures[f"{prefix}per_s_c{c}"] for c in levels], marker="o",
                  color=color, label=label)
        right.plot(levels, [figures[f"{prefix}p50_ms_c{c}"] for c in levels], marker="o",
                   color=color, label=f"{label} p50")
        right.plot(levels, [figures[f"{prefix}p99_ms_c{c}"] for c in levels], marker="x",
                   linestyle=":", color=color)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
    left.set_ylabel("requests/s answered")
    left.set_ylim(bottom=0)
    right.set_ylabel("ms (p50 solid, p99 dotted)")
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.suptitle(f"One API process: signed order entry against bare floors\n"
                 f"{subtitle(figures)}", fontsize=10)
    fig.tight_layout()
    path = IMG / "rest_capacity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    for name, draw in (("e2e_latency", e2e_latency), ("scaling", scaling),
                       ("rest_capacity", rest_capacity)):
        figures = load(name)
        if figures is None:
            print(f"{name}: no results/{name}.json yet, plot skipped")
            continue
        for path in draw(plt, figures):
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
