"""Markdown tables of a ``python -m involution bench`` JSON file, as pasted into docs/performance.md.

Run: ``python -m involution.benchmarks.report out/bench_cpu.json``
"""
from __future__ import annotations

import json
import sys

from involution.benchmarks.op_cpu import BUSY_WARNING
from involution.benchmarks.robustness import calls_by_threads

# issue 17's targets, checked against the run's summary (batch 8 unless noted)
TARGETS = (
    ("forward >= 3x the compiled tap loop (geometric mean), batch 8", "batch 8", "forward_speedup_vs_taps-compiled",
     3.0),
    ("forward >= 3x the compiled tap loop (geometric mean), batch 1", "batch 1", "forward_speedup_vs_taps-compiled",
     3.0),
    ("the same, the fast op timed right after a torch op (as between a PyTorch model's ops), batch 8", "batch 8",
     "forward_speedup_vs_taps-compiled_fast_after_torch", 3.0),
    ("the same, the fast op timed right after a torch op (as between a PyTorch model's ops), batch 1", "batch 1",
     "forward_speedup_vs_taps-compiled_fast_after_torch", 3.0),
    ("forward >= 1.5x the compiled tap loop on every layer, batch 8", "batch 8",
     "forward_min_speedup_vs_taps-compiled", 1.5),
    ("forward >= 1.5x the compiled tap loop on every layer, batch 1", "batch 1",
     "forward_min_speedup_vs_taps-compiled", 1.5),
    ("forward within 2x of the depthwise conv (time ratio >= 0.5), batch 8", "batch 8",
     "forward_speedup_vs_depthwise-conv", 0.5),
    ("forward >= 40 GFLOP/s, batch 8", "batch 8", "forward_gflops", 40.0),
    ("backward >= 8x the compiled tap loop's autograd backward, batch 8", "batch 8",
     "backward_speedup_vs_taps-compiled", 8.0),
    ("backward >= 20 GFLOP/s, batch 8", "batch 8", "backward_gflops", 20.0),
)
OTHERS = (("compiled taps", "taps-compiled"), ("depthwise conv", "depthwise-conv"), ("unfold", "unfold"))


def layer_table(rows: list[dict], way: str) -> str:
    """Per layer: fast ms, GFLOP/s, % of sgemm, then each other's ms and its time / fast time."""
    head = ["layer", "B", f"fast {way} ms", "GFLOP/s", "of sgemm"]
    for label, _ in OTHERS:
        head += [f"{label} ms", f"{label} / fast"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    neighbours = way == "forward" and "forward_after_torch_ms" in rows[0]["fast-cpu"]
    if neighbours:
        head += ["fast after a torch op ms", "compiled taps after fast ms"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for row in rows:
        fast = row["fast-cpu"]
        cells = [row["layer"], str(row["batch"]), f"{fast[way + '_ms']:.2f}", f"{fast[way + '_gflops']:.1f}",
                 f"{100 * fast[way + '_fraction_of_sgemm']:.0f}%"]
        for _, name in OTHERS:
            cells += [f"{row[name][way + '_ms']:.2f}", f"{row[f'{way}_speedup_vs_{name}']:.2f}"]
        if neighbours:
            cells += [f"{fast['forward_after_torch_ms']:.2f}", f"{row['taps-compiled']['forward_after_fast_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(summary: dict) -> str:
    lines = ["| target (issue 17) | this run | met? |", "|---|--:|:-:|"]
    for label, batch, key, threshold in TARGETS:
        if key in summary.get(batch, {}):  # runs before a key existed lack it
            value = summary[batch][key]
            lines.append(f"| {label} | {value:.2f} | {'yes' if value >= threshold else '**no**'} |")
    for batch, values in summary.items():
        if "forward_after_torch_over_settled" in values:
            lines.append(f"\nRight after another runtime's call ({batch}, geometric means over the layers): the fast "
                         f"forward takes {values['forward_after_torch_over_settled']:.2f}x its settled time after "
                         f"a torch op, the compiled tap loop "
                         f"{values['taps-compiled_forward_after_fast_over_settled']:.2f}x its own after the fast op.")
    return "\n".join(lines)


# the under-load table's columns after layer and batch: (header, row key); runs made before a key existed lack it
UNDER_LOAD_COLUMNS = (("quiet median ms", "quiet_median_ms"), ("loaded median ms", "loaded_median_ms"),
                      ("loaded p90 ms", "loaded_p90_ms"), ("p90 / quiet median", "p90_over_quiet_median"),
                      ("static threads: p90 / quiet median", "static_p90_over_quiet_median"),
                      ("one thread quiet ms", "one_thread_quiet_median_ms"),
                      ("one thread loaded ms", "one_thread_loaded_median_ms"),
                      ("one thread loaded / quiet", "one_thread_slowdown"),
                      ("p90 / one thread quiet", "p90_over_one_thread_quiet_median"))


def checks_table(results: dict) -> str:
    """The robustness checks of one run (``benchmarks/robustness.py``): the under-load table and verdict, then the
    threads and fork lines of runs made before those moved to the tests; a check a run lacks is left out."""
    lines = []
    if "under_load" in results:
        lines.append(under_load_text(results["under_load"]))
    if "threads" in results:
        threads = results["threads"]
        lines.append(f"Threads: {threads['threads']} Python threads, {threads['calls']} concurrent calls: "
                     f"{'all results bitwise equal to a lone call' if threads['ok'] else '**results differ**'}.")
    if "fork" in results:
        lines.append(f"Fork ('fork' Pool after using the op, threading layer {results['fork']['threading_layer']}): "
                     f"{results['fork']['status']}.")
    return "\n".join(lines)


def under_load_text(load: dict) -> str:
    """The under-load check's table and verdict, with the columns and sentences the run has (older runs have
    fewer), or the reason it was skipped."""
    if "skipped" in load:
        return f"Under load: skipped ({load['skipped']})."
    columns = [(header, key) for header, key in UNDER_LOAD_COLUMNS if key in load["rows"][0]]
    lines = ["| layer | B | " + " | ".join(header for header, _ in columns) + " |",
             "|---|--:|" + "--:|" * len(columns)]
    lines += [f"| {row['layer']} | {row['batch']} | " + " | ".join(f"{row[key]:.2f}" for _, key in columns) + " |"
              for row in load["rows"]]
    setup = [f"one process spinning on core {load['spinning_core']}, "
             + (f"paused and resumed {load['rounds']} times per layer, {load['calls']} calls per layer and arm"
                if "rounds" in load else f"{load['calls']} calls per layer")]
    if load.get("threads_under_load"):
        dynamic = f", dynamic threads {'on' if load['dynamic_threads'] else 'off'}" if "dynamic_threads" in load else ""
        if isinstance(load["threads_under_load"], dict):  # timed calls per thread count
            setup.append(f"calls of the op as configured on how many threads: "
                         f"{calls_by_threads(load['threads_quiet'])} quiet, "
                         f"{calls_by_threads(load['threads_under_load'])} loaded{dynamic}")
        else:  # earlier runs: the thread count sampled once per phase
            setup.append(f"threads per call {load['threads_quiet']} quiet, {load['threads_under_load']} "
                         f"loaded{dynamic}")
    if not load.get("spinner_ran_throughout", True):
        setup.append("**the spinner stopped before the end: the later loaded calls ran without it**")
    verdict = (f"worst p90 / quiet median {load['worst_p90_over_quiet_median']:.2f} "
               f"({'within' if load['within_2x'] else '**not** within'} the 2x target)")
    if "worst_static_p90_over_quiet_median" in load:
        verdict += (f"; with static threads {load['worst_static_p90_over_quiet_median']:.2f}; over a lone thread's "
                    f"quiet median (what the one free core can do) "
                    f"{load['worst_p90_over_one_thread_quiet_median']:.2f}")
    text = f"\nUnder load ({'; '.join(setup)}): {verdict}."
    if "one_thread_slowdown" in load:
        text += (f" A lone thread's loaded / quiet median: {load['one_thread_slowdown']:.2f} (geometric mean; about 1 "
                 f"where the cores do not contend).")
    return "\n".join(lines) + "\n" + text


def dynamic_label(results: dict) -> str:
    """How the fast op's dynamic threads ran: in the timed rows too (older runs), or only in the under-load check."""
    if not results["machine"].get("dynamic_threads"):
        return ""
    return ", dynamic" if results.get("timed_with_dynamic_threads", True) else ", dynamic in the under-load check only"


def busy_warning(rows: list[dict]) -> str:
    """A sentence when other processes kept cores busy during a timed row (torch's fixed threads then wait for a
    descheduled one), else nothing."""
    busy = [row["others_busy_cores"] for row in rows if row.get("others_busy_cores") is not None]
    if not busy or max(busy) < BUSY_WARNING:
        return ""
    flagged = sum(value >= BUSY_WARNING for value in busy)
    return (f" **Not a quiet machine:** other processes kept up to {max(busy):.1f} cores busy during the timed rows "
            f"({flagged} of {len(busy)} rows at least {BUSY_WARNING}); the ratios below are not a quiet comparison.")


def markdown(results: dict) -> str:
    """Every table of one run, with its command, machine, load and sgemm."""
    machine = results["machine"]
    parts = [f"Command: `{results['command']}`; {machine['cpu']}, {machine['cores']} cores, load average "
             f"{', '.join(f'{value:.1f}' for value in results.get('load_average', ()))} at the end; numba "
             f"{machine['numba']} ({machine['numba_threading_layer']}, {machine['numba_threads']} threads"
             f"{dynamic_label(results)}), torch "
             f"{machine['torch']} ({machine['torch_threads']} threads); sgemm in the same run: "
             f"{results['sgemm_gflops']:.1f} GFLOP/s.{busy_warning(results['rows'])}",
             "Forward:", layer_table(results["rows"], "forward"),
             "Backward (both gradients; torch formulations: autograd's backward of one recorded forward):",
             layer_table(results["rows"], "backward"),
             targets_table(results["summary"]), checks_table(results)]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if len(paths) != 1:
        print("usage: python -m involution.benchmarks.report BENCH_JSON", file=sys.stderr)
        return 2
    with open(paths[0]) as file:
        print(markdown(json.load(file)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
