"""Each benchmark's table, rendered once: the benchmark script prints it, the report shows it.

``bench_markdown`` renders ``bench.json`` (``recipes/bench.py`` prints it), ``cache_markdown``
renders ``bench_cache.json``; the freeze-modes and precision tables are
``recipes/bench_freeze_modes.py``'s and ``recipes/bench_precision.py``'s own ``markdown``
(imported when the report needs them, since those modules load torch).
"""

from __future__ import annotations


def format_bytes(count: float | None) -> str:
    """``1536`` -> ``'1.5 KiB'`` (as ``freeze_policies.costs.format_bytes``, without loading
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


def freeze_modes_markdown(data: dict) -> str:
    """``bench_freeze_modes.json``, rendered by the benchmark's own ``markdown``."""
    from recipes.bench_freeze_modes import markdown

    return (f"`{data['command'].strip()}`: {data['model']}, {data.get('optimizer', '')}, "
            f"median of {data['rounds']} interleaved steps.\n\n" + markdown(data))


def precision_markdown(data: dict) -> str:
    """``bench_precision.json``, rendered by the benchmark's own ``markdown``."""
    from recipes.bench_precision import markdown

    policy = data.get("policy") or {}
    return (f"`{data['command'].strip()}`: {data['model']}, {policy.get('name')} "
            f"(n={policy.get('n')}), batch "
            f"{data.get('batch_size')} x {data.get('seq_len')} tokens, bf16 autocast, device "
            f"{data.get('device')}.\n\n" + markdown(data))


SECTIONS = (  # file beside the report -> (section title, renderer, required keys)
    ("bench.json", "Cost benchmark", bench_markdown, ("methods", "targets")),
    ("bench_freeze_modes.json", "Freeze modes (same policy, three ways of freezing)",
     freeze_modes_markdown, ("modes", "machinery", "command")),
    ("bench_cache.json", "Frozen-prefix cache", cache_markdown,
     ("methods", "targets", "command")),
    ("bench_precision.json", "Frozen weights in bfloat16 (memory)", precision_markdown,
     ("variants", "targets", "command")),
)
