"""Each benchmark's table, rendered once: the benchmark script prints it, the report shows it.

Every ``bench*.json`` the report shows has its renderer here (``bench_markdown``,
``cache_markdown``, ``freeze_modes_markdown``, ``precision_markdown``); the benchmarks import
their tables from here to print them, so the report never imports a benchmark.
"""

from __future__ import annotations

import statistics
from pathlib import Path


def format_bytes(count: float | None) -> str:
    """``1536`` -> ``'1.5 KiB'`` (as ``freeze_policies.costs.flops.format_bytes``, without loading
    torch: the report reads JSON only)."""
    if count is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def verdict(passed) -> str:
    return {True: "met", False: "missed", None: "not measured"}[passed]


def bench_markdown(bench: dict) -> str:
    """``bench.json``: per-method step time, FLOP model and memory accounting, and targets."""
    detail = bench.get("rounds_detail") or {}
    lines = [
        f"`{bench.get('command', 'python recipes/bench.py')}` — {bench.get('model')} "
        f"({bench.get('model_class', '')}), batch {bench.get('batch_size')} x "
        f"{bench.get('seq_len')} tokens, step time = median over {bench.get('rounds')} "
        f"undisturbed interleaved rounds (of {detail.get('timed_rounds', '?')} timed, after "
        f"{bench.get('warmup')} warm-up), device {bench.get('device')}, "
        f"{bench.get('optimizer', '')}. Memory: {bench.get('memory_kind', '')}.",
        *[f"Note: {note}." for note in bench.get("notes", [])],
        "",
        "| method | trainable | step (ms) | step time vs full | FLOP model | gradients | "
        "optimizer state | frozen-param state | saved for backward | memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in bench["methods"]:
        share = (f"{100 * row['trainable_params'] / row['total_params']:.2f}%"
                 if row.get("total_params") else "—")
        step = f"{1000 * row['median_step_s']:.0f}" if row.get("median_step_s") else "—"
        lines.append(
            f"| {row['label']} | {share} | {step} "
            f"| {row['step_ratio']:.2f} | {row['flop_ratio']:.2f} "
            f"| {format_bytes(row.get('gradient_bytes'))} "
            f"| {format_bytes(row.get('optimizer_state_bytes'))} "
            f"| {format_bytes(row.get('frozen_optimizer_state_bytes'))} "
            f"| {format_bytes(row.get('saved_for_backward_bytes'))} "
            f"| {format_bytes(row.get('memory_bytes'))} |"
        )
    lines += ["", "| target | value | threshold | result |", "|---|---:|---|---|"]
    for name, result in bench["targets"].items():
        value = result.get("value")
        shown = "—" if value is None else f"{value:.3g}" if isinstance(value, float) else value
        lines.append(
            f"| {name} | {shown} | {result.get('threshold')} | {verdict(result.get('passed'))} |"
        )
    return "\n".join(lines)


def cache_markdown(data: dict) -> str:
    """``bench_cache.json``: cached and uncached step times against full fine-tuning."""
    lines = [
        f"`{data['command'].strip()}`: {data['model']}, batches of {data['batch_size']} x "
        f"{data['seq_len']}, {data['batches_per_epoch']} batches per epoch, {data['epochs']} "
        "epochs, steps interleaved.",
        "",
        "| method | step vs full, epochs 2+ | epoch 1 (recording) | cache size |",
        "|---|---:|---:|---:|",
    ]
    for label, row in data["methods"].items():
        size = format_bytes(row["cache_bytes"]) if row["cache_bytes"] else "-"
        lines.append(f"| {label} | {row['ratio_to_full']:.3f} | "
                     f"{row['first_epoch_ratio_to_full']:.3f} | {size} |")
    lines.append("")
    for name, target in data["targets"].items():
        lines.append(f"- {name}: {target['value']:.3f} (target {target['threshold']}): "
                     f"{verdict(target['passed'])}")
    return "\n".join(lines)


def freeze_modes_table(result: dict) -> str:
    full = result["modes"]["full"]["median_step_s"]
    lines = [
        "| freeze mode | step (s) | vs full | params requiring grad | optimizer state MB | "
        "gradient MB | frozen weights identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, row in result["modes"].items():
        audit = "n/a" if row["audit_checked"] == 0 else (
            "yes" if row["audit_passed"] else f"no ({row['audit_moved']} of "
            f"{row['audit_checked']} moved, max {row['audit_max_abs_diff']:.2g})"
        )
        lines.append(
            f"| {mode} | {row['median_step_s']:.3f} | {row['median_step_s'] / full:.2f} | "
            f"{row['params_requiring_grad']:,} | {row['optimizer_state_bytes'] / 2**20:.1f} | "
            f"{row['gradient_bytes'] / 2**20:.1f} | {audit} |"
        )
    m = result["machinery"]
    lines += [
        "",
        "| machinery | time (ms) | % of a requires_grad step |",
        "|---|---|---|",
        f"| apply a stage (names + set_trainable) | {1e3 * m['apply_stage_s']:.2f} | "
        f"{m['apply_stage_pct_of_step']:.3f} |",
        f"| schedule check, every step | {1e3 * m['schedule_check_per_step_s']:.4f} | "
        f"{m['schedule_check_per_step_pct_of_step']:.4f} |",
        f"| audit snapshot (once, at the start; first call) | "
        f"{1e3 * m['audit_first_snapshot_s']:.2f} | {m['audit_first_snapshot_pct_of_step']:.3f} |",
        f"| audit snapshot (repeated, median) | {1e3 * m['audit_snapshot_s']:.2f} | "
        f"{m['audit_snapshot_pct_of_step']:.3f} |",
        f"| audit check (once, at the end) | {1e3 * m['audit_check_s']:.2f} | "
        f"{m['audit_check_pct_of_step']:.3f} |",
        "",
        f"The audit (snapshot + check, once per run) is under 1% of training time from "
        f"{m['audit_under_1pct_from_steps']} steps on.",
    ]
    return "\n".join(lines)


def mib(count) -> str:
    return "-" if count is None else f"{count / 2**20:.1f}"


def precision_table(payload: dict) -> str:
    lines = [
        "| variant | params MiB | grads MiB | optimizer MiB | saved MiB | accounted MiB "
        "| peak RSS MiB | CUDA max alloc MiB | audit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["variants"]:
        lines.append(
            f"| {row['variant']} | {mib(row['parameter_bytes'])} | {mib(row['gradient_bytes'])} "
            f"| {mib(row['optimizer_state_bytes'])} | {mib(row['saved_for_backward_bytes'])} "
            f"| {mib(row['accounted_bytes'])} | {mib(row['peak_rss_bytes'])} "
            f"| {mib(row['cuda_max_memory_allocated'])} | {row['frozen_audit_passed']} |"
        )
    for name, target in payload["targets"].items():
        lines.append(
            f"\n{name}: {target['value']:.3f} (target {target['threshold']}: "
            f"{'passed' if target['passed'] else 'missed'})"
        )
    return "\n".join(lines)


def freeze_modes_markdown(data: dict) -> str:
    """``bench_freeze_modes.json`` as the report shows it."""
    return (f"`{data['command'].strip()}`: {data['model']}, {data.get('optimizer', '')}, "
            f"median of {data['rounds']} interleaved steps.\n\n" + freeze_modes_table(data))


def precision_markdown(data: dict) -> str:
    """``bench_precision.json`` as the report shows it."""
    policy = data.get("policy") or {}
    return (f"`{data['command'].strip()}`: {data['model']}, {policy.get('name')} "
            f"(n={policy.get('n')}), batch "
            f"{data.get('batch_size')} x {data.get('seq_len')} tokens, bf16 autocast, device "
            f"{data.get('device')}.\n\n" + precision_table(data))


SPEED_GOAL = 1.5  # issue 28: at least 1.5x faster end to end by the wall clock...
MARGIN = 1.0  # ...and non-inferior by 1 point: the paired 95% interval's lower bound above -1


def _range(spread: dict, fmt: str = "{:.2f}") -> str:
    return (f"{fmt.format(spread['mean'])} ({fmt.format(spread['min'])}-"
            f"{fmt.format(spread['max'])})")


def depth_reached(runs: list[dict]) -> dict[int, list[int]]:
    """Frozen depth -> the step at which each run first reached it (runs that never did are
    left out of that depth's list)."""
    reached: dict[int, list[int]] = {}
    for run in runs:
        first: dict[int, int] = {}
        for step, depth in run.get("depth_over_steps") or []:
            for d in range(1, depth + 1):
                first.setdefault(d, step)
        for d, step in first.items():
            reached.setdefault(d, []).append(step)
    return dict(sorted(reached.items()))


def arm_options(arm: dict) -> dict | None:
    """The policy options an arm ran with: as the bench recorded them (``method``), else, for a
    JSON written before it did, its fields' (the profile's and the arm's own), else its
    config's (``configs/<cell>.yaml``, read when the report runs from the checkout)."""
    if "method" in arm:
        return (arm["method"] or {}).get("policy_options") or None
    options = (arm.get("fields") or {}).get("policy_options")
    if options is None and arm.get("config") and Path(arm["config"]).is_file():
        from freeze_policies.policies.registry import load_yaml

        options = (load_yaml(Path(arm["config"]).read_text()) or {}).get("policy_options")
    return options


def depth_columns(deepest: int) -> list[str]:
    """The depth table's columns: one per depth reached, or one saying none was."""
    return [f"depth {d}" for d in range(1, deepest + 1)] or ["depth reached"]


def adaptive_markdown(data: dict) -> str:
    """``bench_adaptive.json``: each arm against the baseline by the wall clock, side by side,
    with the paired accuracy gap and how deep each arm froze when."""
    summary = data["summary"]
    baseline = summary["baseline"]
    hardware = data.get("hardware") or {}
    versions = data.get("versions") or {}
    load = summary.get("loadavg") or {}
    by_arm: dict[str, list[dict]] = {}
    for run in data["runs"]:
        by_arm.setdefault(run["arm"], []).append(run)
    lines = [
        f"`{data['command'].strip()}`: every arm end to end through the launcher (data, model, "
        f"training, validation, test) in one process, arms alternating within each seed, the "
        f"order rotating from seed to seed; seeds {', '.join(map(str, data['seeds']))}"
        f"{'' if data.get('complete') else ' (INCOMPLETE: interrupted)'}. "
        f"{hardware.get('platform', '?')}, {hardware.get('cpu_count', '?')} CPUs, "
        f"{hardware.get('torch_threads', '?')} torch thread(s), torch "
        f"{versions.get('torch', '?')}, transformers {versions.get('transformers', '?')}; "
        f"1-minute load average {load.get('min', 0):.1f}-{load.get('max', 0):.1f} around the runs "
        f"(the machine was shared: both arms of a seed saw the same load, which is why the ratio, "
        f"not the seconds, is the measure).",
        "",
        f"| arm | options | rate | wall speedup, mean (min-max) | training-only speedup | "
        f"test accuracy (%) | vs {baseline}: points, paired 95% | {SPEED_GOAL}x by the clock | "
        f"non-inferior by {MARGIN:g} point |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    arms = {arm["label"]: arm for arm in data["arms"]}
    for label, arm in arms.items():
        runs = by_arm.get(label, [])
        accuracy = [100 * r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None]
        mean_acc = f"{sum(accuracy) / len(accuracy):.2f}" if accuracy else "—"
        options = arm_options(arm)
        shown = ", ".join(f"{k}={v}" for k, v in options.items()) if options else "—"
        entry = summary["arms"].get(label)
        if entry is None:
            lines.append(f"| {label} (baseline) | {shown} | {arm['learning_rate']:g} | 1 | 1 | "
                         f"{mean_acc} | — | — | — |")
            continue
        diff = entry.get("test_accuracy_diff_points") or {}
        ci = diff.get("ci95")
        gap = "—" if not diff else (
            f"{diff['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""))
        fast = entry["speedup_wall"]["mean"] >= SPEED_GOAL
        inferior = None if not ci else ci[0] > -MARGIN
        lines.append(
            f"| {label} | {shown} | {arm['learning_rate']:g} | {_range(entry['speedup_wall'])}x "
            f"| {_range(entry['speedup_train'])}x | {mean_acc} | {gap} | {verdict(fast)} "
            f"| {verdict(inferior)} |")
    deepest = max((max(depth_reached(runs), default=0) for runs in by_arm.values()), default=0)
    lines += ["", "Frozen depth over the steps: the step at which each depth was first reached, "
              "median over the seeds (earliest-latest; n = seeds that reached it), and the "
              "prefix cache's steps that replayed with no fill (hits), steps that filled rows "
              "(records) and rows filled, medians.", "",
              "| arm | steps | " + " | ".join(depth_columns(deepest)) +
              " | hits | records | rows filled |",
              "|---|---:|" + "---:|" * (len(depth_columns(deepest)) + 3)]
    for label in arms:
        runs = by_arm.get(label, [])
        reached = depth_reached(runs)
        if not reached and label == baseline:
            continue
        cells = [f"{statistics.median(reached[d]):g} ({min(reached[d])}-{max(reached[d])}; "
                 f"n={len(reached[d])})" if d in reached else "—"
                 for d in range(1, deepest + 1)] or ["none"]
        cache = [r.get("prefix_cache") or {} for r in runs]

        def stat(key, cache=cache):
            values = [c[key] for c in cache if key in c]
            return f"{statistics.median(values):g}" if values else "—"

        steps = runs[0].get("max_steps") if runs else "—"
        lines.append(f"| {label} | {steps} | " + " | ".join(cells) +
                     f" | {stat('hits')} | {stat('records')} | {stat('rows_filled')} |")
    verdicts = [goal_sentence(label, summary["arms"][label], by_arm.get(label, []))
                for label in arms if label in summary["arms"]]
    if verdicts:
        lines += ["", f"Against the goal ({SPEED_GOAL}x faster end to end by the mean wall-clock "
                  f"ratio, and non-inferior: the paired interval's lower bound above "
                  f"-{MARGIN:g} point):", "", *[f"- {v}" for v in verdicts]]
    return "\n".join(lines)


def goal_sentence(label: str, entry: dict, runs: list[dict]) -> str:
    """By how much an arm met or missed each half of the goal, and when it froze (the lever that
    sets both: freezing early buys time and risks accuracy)."""
    speed = entry["speedup_wall"]["mean"]
    diff = entry.get("test_accuracy_diff_points") or {}
    ci = diff.get("ci95")
    parts = [f"{label}: {speed:.2f}x, "
             + (f"{speed - SPEED_GOAL:.2f} above {SPEED_GOAL}x" if speed >= SPEED_GOAL
                else f"{SPEED_GOAL - speed:.2f} short of {SPEED_GOAL}x")]
    if ci:
        low = ci[0]
        parts.append(f"accuracy {diff['mean']:+.2f} points, lower bound {low:+.2f}: "
                     + (f"non-inferior ({low + MARGIN:.2f} above -{MARGIN:g})" if low > -MARGIN
                        else f"not shown ({-MARGIN - low:.2f} below -{MARGIN:g}) over "
                             f"{len(diff.get('per_seed') or [])} seeds"))
    elif diff:
        parts.append(f"accuracy {diff['mean']:+.2f} points on {len(diff.get('per_seed') or [])} "
                     "seed(s): no interval, non-inferiority not tested")
    reached = depth_reached(runs)
    if reached:
        steps = runs[0].get("max_steps")
        everyone = [d for d, s in reached.items() if len(s) == len(runs)]
        first = statistics.median(reached[min(reached)])
        text = f"first freeze at step {first:g}"
        if everyone:
            deep = max(everyone)
            at = statistics.median(reached[deep])
            text += f", depth {deep} (reached by every seed) at step {at:g}"
        parts.append(text + (f" of {steps} (medians)" if steps else " (medians)"))
    return "; ".join(parts) + "."


SECTIONS = (  # file beside the report -> (section title, renderer, required keys)
    ("bench.json", "Cost benchmark", bench_markdown, ("methods", "targets")),
    ("bench_freeze_modes.json", "Freeze modes (same policy, three ways of freezing)",
     freeze_modes_markdown, ("modes", "machinery", "command")),
    ("bench_cache.json", "Frozen-prefix cache", cache_markdown,
     ("methods", "targets", "command")),
    ("bench_precision.json", "Frozen weights in bfloat16 (memory)", precision_markdown,
     ("variants", "targets", "command")),
    ("bench_adaptive.json", "Adaptive freezing by the clock (auto_freeze against full)",
     adaptive_markdown, ("runs", "summary", "arms", "seeds", "command")),
    ("bench_adaptive_smollm2.json", "Adaptive freezing by the clock on SmolLM2-135M",
     adaptive_markdown, ("runs", "summary", "arms", "seeds", "command")),
)
