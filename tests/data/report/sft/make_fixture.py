"""Regenerate this folder: the sft profile's five cells (``configs/experiments/sft.yaml``) run for
real by ``recipes/sweep.py`` and the launcher, with a 4-block Llama of random weights on
SmolLM2's tokenizer, on 400 of chatterbot's training pairs for 24 steps: the files are exactly
what ``--task sft`` writes (``generations`` included), at a size a test reads in a second.

    python tests/data/report/sft/make_fixture.py    # from the repository root; ~5 CPU minutes

Only the temporary folder's name is rewritten afterwards (the model reads ``smollm2-tiny``, the
profile ``sft-fixture.yaml``). The numbers are a tiny model's after a few steps: the fixture is
for the report's shape (tables, intervals, generations), not for any finding.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
CURVE = {"eval_strategy": "steps", "eval_steps": 6}
TIED = {"tied_weights": "freeze"}


def profile(model: str) -> dict:
    """``configs/experiments/sft.yaml`` at a tiny size (its cells, protocol and seeds)."""
    return {
        "seeds": [0, 1, 2],
        "torch_threads": 1,
        "lrs": {"default": [3.0e-3, 1.0e-2, 3.0e-2], "adapter": [1.0e-2, 3.0e-2, 1.0e-1]},
        "grid_extension": {"max_extensions": 1, "bounds": [1.0e-6, 0.3]},
        "sweep": {"max_steps": 8},
        "common": {
            "model_name_or_path": model, "max_steps": 24, "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 32, "max_length": 64, "eval_strategy": "no",
            "logging_steps": 8, "report_to": "none", "train_sampling_strategy": "group_by_length",
            "max_train_samples": 400, "max_eval_samples": 60, "max_new_tokens": 12,
            "use_cpu": True,
        },
        "cells": {
            "chatterbot/smollm2/sft_full": {"curve_fields": CURVE},
            "chatterbot/smollm2/sft_auto_freeze": {
                "fields": {"policy_options": {"every": 4, **TIED}},
                "sweep": {"policy_options": {"every": 2, **TIED}}},
            "chatterbot/smollm2/sft_lora": {"lr_grid": "adapter", "curve_fields": CURVE},
            "chatterbot/smollm2/sft_bottom_n": {"fields": {"policy_options": {"n": 3, **TIED}},
                                                "curve_fields": CURVE},
            "chatterbot/smollm2/sft_top_n": {"fields": {"cache_frozen_prefix": True}},
        },
    }


def tiny_model(folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from freeze_policies.examples import model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path("smollm2"))
    config = AutoConfig.for_model(
        "llama", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=48, vocab_size=len(tokenizer),
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    import yaml

    from recipes.experiments import sweep

    os.chdir(ROOT)  # the cells' configs are read by path
    with tempfile.TemporaryDirectory() as temporary:
        base = Path(temporary)
        model = base / "smollm2-tiny"
        tiny_model(model)
        path = base / "sft-fixture.yaml"
        spec = profile(str(model))
        path.write_text(yaml.safe_dump(spec))
        out = HERE.relative_to(ROOT)
        for cell in spec["cells"]:
            sweep.run_cell(str(path), cell, str(out))
        for written in [*HERE.rglob("results.json"), *HERE.rglob("selection.json")]:
            written.write_text(written.read_text().replace(f"{base}/", ""))
        for lock in HERE.rglob(".lock"):  # recipes/sweep.py's per-cell locks
            lock.unlink()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
