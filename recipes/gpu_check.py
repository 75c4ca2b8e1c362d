"""One GPU check: the GPU-marked tests and a launcher smoke under bf16, in one summary table.

    make gpu-check                      # = python recipes/gpu_check.py --out results/gpu_check.json
    python recipes/gpu_check.py [--skip-tests] [--skip-smoke] [--smoke-steps 60]

On a machine without CUDA it prints that nothing ran and exits 0. With CUDA:

1. **GPU-marked tests**: ``pytest -m gpu tests/test_distributed.py tests/test_precision.py
   tests/test_fsdp2_schedules.py``: FSDP1 and FSDP2 with ``bottom_n``, schedules refused under
   FSDP1 and trained under FSDP2, FSDP1 without ``use_orig_params`` refused, DeepSpeed
   ZeRO-2/3 (skipped when ``deepspeed`` is not installed), DDP on 2 GPUs (skipped on one),
   ``frozen_dtype`` lowering ``max_memory_allocated``, the frozen-weights audit under
   FSDP1/FSDP2/ZeRO-2/ZeRO-3 comparing full gathered values (``tests/sharded_audit_worker.py``),
   and ``gradual_unfreeze``, ``lisa`` and ``auto_freeze`` through accelerate's FSDP2 plugin and
   ``FreezeTrainer`` with a resume from the sharded checkpoint, against DDP
   (``tests/fsdp2_trainer_worker.py``; 2 processes on 2 GPUs, 1 on one). One row per test.
2. **Launcher smoke** (about five minutes on one GPU): ``recipes/run.py`` through
   ``accelerate launch --config_file configs/accelerate/single_gpu.yaml`` with ``--bf16 true``,
   ``--smoke-steps`` steps on a subsample, for MiniLM and SmolLM2 with ``bottom_n``,
   ``bottom_n`` with ``--frozen_dtype bfloat16``, ``gradual_unfreeze`` (a stage every 10 steps)
   and LoRA. One row per run: test accuracy, ``max_memory_allocated`` (``peak_memory_bytes``),
   stored parameter bytes and the audit, from its ``results.json``.

The table is printed at the end (and written to ``--out`` as JSON with the hardware); the exit
status is 1 when a test failed or a run did not finish, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(ROOT))

from recipes.launcher.results import read_results  # noqa: E402

GPU_TESTS = ["tests/test_distributed.py", "tests/test_precision.py",
             "tests/test_fsdp2_schedules.py"]
ACCELERATE_CONFIG = "configs/accelerate/single_gpu.yaml"
GRADUAL = ["--policy_options", '{"every": 10, "unit": "steps"}']
FROZEN_BF16 = ["--frozen_dtype", "bfloat16"]
# (name, config, extra flags): every run also gets --bf16 true and the smoke's size flags
SMOKE_RUNS = [
    ("minilm/bottom_n", "configs/tweets/minilm/bottom_n.yaml", []),
    ("minilm/bottom_n+bf16-frozen", "configs/tweets/minilm/bottom_n.yaml", FROZEN_BF16),
    ("minilm/gradual_unfreeze", "configs/tweets/minilm/gradual_unfreeze.yaml", GRADUAL),
    ("minilm/lora", "configs/tweets/minilm/lora.yaml", []),
    ("smollm2/bottom_n", "configs/tweets/smollm2/bottom_n.yaml", []),
    ("smollm2/bottom_n+bf16-frozen", "configs/tweets/smollm2/bottom_n.yaml", FROZEN_BF16),
    ("smollm2/gradual_unfreeze", "configs/tweets/minilm/gradual_unfreeze.yaml",
     ["--model_name_or_path", "smollm2", *GRADUAL]),
    ("smollm2/lora", "configs/tweets/smollm2/lora.yaml", []),
]


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_tests(scratch: Path) -> list[dict]:
    """The GPU-marked tests, one row per test case (from pytest's JUnit XML)."""
    report = scratch / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               *GPU_TESTS, f"--junitxml={report}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if not report.is_file():
        return [{"kind": "test", "name": "pytest -m gpu", "outcome": "error", "seconds": None,
                 "detail": (done.stderr or done.stdout).strip().splitlines()[-1:]}]
    rows = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = found.get("message") or ""
                detail = message.splitlines()[0][:120] if message else ""
        rows.append({
            "kind": "test",
            "name": f"{Path(case.get('classname', '').replace('.', '/')).name}::{case.get('name')}",
            "outcome": outcome,
            "seconds": float(case.get("time") or 0),
            "detail": detail,
        })
    if not rows:
        rows.append({"kind": "test", "name": "pytest -m gpu", "outcome": "error",
                     "seconds": None, "detail": "no test ran"})
    return rows


def run_smoke(scratch: Path, steps: int) -> list[dict]:
    """The launcher under bf16 on one GPU, one row per run (see the module docstring)."""
    rows = []
    for name, config, extra in SMOKE_RUNS:
        out = scratch / "smoke" / name.replace("/", "__")
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            ACCELERATE_CONFIG, "recipes/run.py", "--config", config, *extra, "--bf16", "true",
            "--max_steps", str(steps), "--max_train_samples", "2000", "--max_eval_samples", "500",
            "--per_device_train_batch_size", "16", "--eval_strategy", "no",
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "20",
            "--output_dir", str(out),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        seconds = time.perf_counter() - started
        results_file = out / "results.json"
        if done.returncode != 0 or not results_file.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            rows.append({"kind": "smoke", "name": name, "outcome": "failed",
                         "seconds": seconds, "detail": last[0][:160]})
            continue
        results = read_results(results_file)  # the schema (recipes.launcher.results)
        audit = results.frozen_audit or {}
        accuracy = results.metrics.get("test_accuracy")
        detail = [
            f"test acc {accuracy:.3f}" if isinstance(accuracy, (int, float)) else "",
            f"max alloc {(results.peak_memory_bytes or 0) / 2**20:.0f} MiB "
            f"({results.peak_memory_kind})",
            f"params {(results.parameter_bytes or 0) / 2**20:.0f} MiB",
            f"audit {audit.get('passed')}" if audit else "audit n/a",
        ]
        passed = audit.get("passed", True) is not False
        rows.append({"kind": "smoke", "name": name, "outcome": "passed" if passed else "failed",
                     "seconds": seconds, "detail": ", ".join(d for d in detail if d),
                     "results": {"test_accuracy": accuracy, **{k: getattr(results, k) for k in (
                         "peak_memory_bytes", "peak_memory_kind", "parameter_bytes",
                         "gradient_bytes", "optimizer_state_bytes", "train_runtime")}}})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| kind | check | outcome | seconds | detail |", "|---|---|---|---|---|"]
    for row in rows:
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(f"| {row['kind']} | {row['name']} | {row['outcome']} | {seconds} "
                     f"| {row['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the rows and the hardware as JSON here")
    parser.add_argument("--skip-tests", action="store_true", help="no GPU-marked tests")
    parser.add_argument("--skip-smoke", action="store_true", help="no launcher smoke")
    parser.add_argument("--smoke-steps", type=int, default=60)
    options = parser.parse_args(argv)
    devices = cuda_devices()
    if devices == 0:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing ran.")
        return 0
    import torch

    try:
        import deepspeed  # noqa: F401

        deepspeed_note = "deepspeed importable: ZeRO-2/3 tests run"
    except ImportError:
        deepspeed_note = "deepspeed not installed: ZeRO-2/3 tests skip"
    hardware = {"gpu": torch.cuda.get_device_name(0), "gpu_count": devices,
                "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"gpu-check on {devices} x {hardware['gpu']} (torch {hardware['torch']}, "
          f"CUDA {hardware['cuda']}); {deepspeed_note}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        if not options.skip_tests:
            rows += run_tests(Path(scratch))
        if not options.skip_smoke:
            rows += run_smoke(Path(scratch), options.smoke_steps)
    print(table(rows))
    failed = [row for row in rows if row["outcome"] in ("failed", "error")]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed or skipped; "
          f"{len(failed)} failed")
    if options.out:
        path = Path(options.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"hardware": hardware, "deepspeed": deepspeed_note, "rows": rows}
        path.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
