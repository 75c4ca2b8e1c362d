"""The model card (``README.md``) the launcher writes beside a saved model, adapter or delta."""

from __future__ import annotations

import json
from pathlib import Path

from freeze_policies.examples import EXAMPLE_MODELS
from recipes.launcher.run_dir import CARD_MARKER


def named_base(outputs) -> bool:
    """Whether the base model was named by a Hub id or a bundled alias (the card's metadata
    ``base_model`` is then that name, as the user typed it); a local folder is never put there:
    the Hub reads ``base_model`` as a model id, and a path names a folder on one machine only
    (the table below the metadata shows it)."""
    name = outputs.base_model
    return name in EXAMPLE_MODELS or not (
        name.startswith((".", "/", "~")) or outputs.base_path == name and Path(name).exists()
    )


def _loading_code(outputs) -> str:
    folder = str(outputs.output_dir)
    auto = outputs.auto_class  # the task's (recipes.launcher.tasks), as main hands it over
    if outputs.kind == "model":
        return (f"from transformers import AutoTokenizer, {auto}\n\n"
                f"model = {auto}.from_pretrained({folder!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")
    if outputs.kind == "delta":
        return ("from transformers import AutoTokenizer\n\n"
                "from freeze_policies import load_freeze_delta\n\n"
                f"model = load_freeze_delta({folder!r})  # the base, then the trained tensors\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")
    extra = "".join(f", {key}={value!r}" for key, value in outputs.label_config.items())
    return (f"from peft import PeftModel\nfrom transformers import AutoTokenizer, {auto}\n\n"
            f"base = {auto}.from_pretrained({outputs.base_path!r}{extra})\n"
            f"model = PeftModel.from_pretrained(base, {folder!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")


def model_card(outputs) -> str:
    """The README.md of a run folder: YAML metadata, what was trained, results, command, loading."""
    r = outputs.results  # a recipes.launcher.results.RunResults
    method = r.method
    if method == "freeze":
        what = f"freeze policy `{r.policy}`"
        if r.policy_options:
            what += f" with options `{json.dumps(r.policy_options, sort_keys=True)}`"
        what += f", freeze mode `{r.freeze_mode}`"
    elif method == "peft":
        what = f"PEFT `{r.peft_method}`"
        if r.peft_options:
            what += f" with options `{json.dumps(r.peft_options, sort_keys=True)}`"
    else:
        what = "full fine-tuning"
    tags = list(dict.fromkeys(["freeze-policies", method, r.policy or r.peft_method or "full"]))
    share = r.trainable_params / r.total_params if r.total_params else 0.0
    metrics = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float))}
    saved = {"model": "the whole model and its tokenizer",
             "adapter": "the PEFT adapter (with the trained head) and the tokenizer",
             "delta": "a freeze delta: only the parameters that trained, plus the base model's "
                      "path, and the tokenizer"}[outputs.kind]
    lines = [
        "---",
        *([f"base_model: {json.dumps(outputs.base_model)}"] if named_base(outputs) else []),
        f"library_name: {'peft' if outputs.kind == 'adapter' else 'transformers'}",
        "tags:",
        *[f"- {json.dumps(tag)}" for tag in tags],
        "---",
        CARD_MARKER,
        "",
        f"# {outputs.output_dir.name}",
        "",
        f"`{outputs.base_model}` fine-tuned on `{r.dataset}` ({r.task}) with {what}, by "
        "`recipes/run.py` of freeze-policies.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{outputs.base_model}`" + (
            f" (`{outputs.base_path}`)" if outputs.base_path != outputs.base_model else "") + " |",
        f"| method | {what} |",
        f"| trainable parameters | {r.trainable_params:,} of {r.total_params:,} "
        f"({share:.2%})" + (f"; {r.trainable_params_max:,} over all stages"
                            if r.trainable_params_max not in (None, r.trainable_params)
                            else "") + " |",
        f"| training | seed {r.seed}, learning rate {r.learning_rate:g}, "
        f"{r.max_steps} steps |",
        f"| saved here | {saved} |",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())],
        "",
        "## Command",
        "",
        "```bash",
        r.command,
        "```",
        "",
        "## Loading",
        "",
        "```python",
        _loading_code(outputs).rstrip("\n"),
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(r.versions.items())),
        "",
    ]
    return "\n".join(lines)
