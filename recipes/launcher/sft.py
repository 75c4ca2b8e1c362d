"""The launcher's ``--task sft``: supervised fine-tuning of a decoder-only causal LM on prompt ->
completion pairs, with the loss on the completion only.

**Data** (``load_sft_splits``, through ``recipes.data.pairs.read_pairs``): ``"chatterbot"``
(embedded, offline) gives the corpus's consecutive turns as (statement -> response) pairs,
deduplicated (1,243 pairs, 1,043 distinct prompts); a local ``.jsonl`` / ``.json`` / ``.csv`` /
``.parquet`` file (``--dataset FILE``) or a Hub dataset gives the columns ``prompt_column`` /
``completion_column`` (default ``prompt`` / ``completion``, as TRL's prompt-completion datasets
name them). A missing column is one line naming the file and its columns, before any model loads;
rows with no prompt or completion are left out, announced and recorded in ``rows_left_out``.
Missing splits are carved **by prompt** (``recipes.data.splits.draw_groups``): every row of a
prompt lands in one split, so no prompt of validation or test was trained on; the carving is
seeded by ``data_seed_splits`` and each split's digest is recorded in ``results.json`` as for
every task. (Splits a Hub dataset brings are used as they are.)

**Format** (``encode_pair``): no chat template by default, since a base model never saw one: the
prompt, a newline (``SEPARATOR``), the completion, then the tokenizer's end-of-sequence token, so
generation learns to stop. The newline is also how the causal-LM task joins chatterbot's turns.
The prompt is tokenized after any start token the tokenizer puts before a text (a BOS for
Llama-style tokenizers; none for SmolLM2 or GPT-2), the completion separately, without special
tokens, so the boundary between them is exact. ``--chat_template true`` renders the prompt as a
user turn with the tokenizer's chat template (``add_generation_prompt``) instead, for an instruct
model; the completion is then the assistant's turn, ended by the eos token (``<|im_end|>`` for
SmolLM2, its template's end of turn). Labels are -100 on the prompt and on padding, the token ids
on the completion and its eos.

**Truncation** at ``max_length`` never cuts the answer: the prompt is cut from the left (its end,
next to the answer, stays; a start token stays first), and a row whose completion and eos leave
no room for one prompt token is left out, announced and counted in ``rows_left_out``, like a row
with no text. Prompts cut are announced per split.

**Batches** (``CompletionCollator``): right padding, ``input_ids`` with the pad token,
``attention_mask`` with 0, ``labels`` with -100; any other column (the texts) is dropped.

**Metrics** (``RunSFTTrainer``, ``recipes.launcher.metrics.completion``): ``eval_loss`` /
``test_loss`` are the exact mean cross-entropy over the completion tokens of the split (not
``Trainer``'s mean of per-batch means), perplexity its exponential, and ``token_accuracy`` the
share of completion tokens whose teacher-forced argmax is the label; the logits are reduced to
that batch by batch, never kept. The training loss is ``Trainer``'s: the model's sum over the
completion tokens of the accumulated batches over their number (``num_items_in_batch``).

**Generations** (``generate_examples``): after training, greedy decoding (at most
``max_new_tokens``, stopping at eos) of the first ``generations`` distinct prompts of the test
split, in split order, recorded in ``results.json`` as ``generations``: ``prompt`` and
``reference`` as the data gives them, ``generated`` (decoded without special tokens) and
``stopped`` (whether it ended with eos within the limit). Not under FSDP or DeepSpeed, whose
sharded weights a single process cannot run (``generations`` is then null, with a notice), and
not when the test split is not evaluated (``--do_predict false``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets

from recipes.data.files import LeftOut, leave_out_rows, set_left_out
from recipes.data.pairs import PairColumns, read_pairs
from recipes.data.sources import check_length
from recipes.data.splits import SplitSizes
from recipes.launcher.metrics.completion import IGNORE, completion_predictions
from recipes.launcher.outputs import RunTrainer

SEPARATOR = "\n"
"""Between the prompt and the completion when no chat template is used."""

TEXT_COLUMNS = ("prompt", "completion")

logger = logging.getLogger("recipes.data.sources")


def load_sft_splits(
    source: str = "chatterbot",
    *,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    dataset_config: str | None = None,
    **split_options,
) -> datasets.DatasetDict:
    """``train`` / ``validation`` / ``test`` splits of prompt/completion pairs, carved by prompt
    (module docstring); ``split_options`` as for ``recipes.data.splits.SplitSizes``.

    Returns:
        A ``DatasetDict`` whose splits have exactly the string columns ``prompt`` and
        ``completion``, carrying what was left out (``recipes.data.files.left_out_of``).
    """
    sizes = SplitSizes(**split_options)
    names = PairColumns("prompt", "completion", prompt_column, completion_column,
                        "prompt_column", "completion_column")
    raw, left_out = read_pairs(source, dataset_config, names)
    return set_left_out(sizes.carve(raw, stratify=False, group="prompt"), left_out)


def start_ids(tokenizer) -> list[int]:
    """The token the tokenizer puts before every text for its model: its BOS when it adds one
    (Llama), else nothing (SmolLM2, GPT-2; a ``[CLS]`` is no BOS)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def prompt_text(prompt: str, tokenizer, chat_template: bool) -> str:
    """The text the model reads before the completion (module docstring: Format)."""
    if chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt + SEPARATOR


def encode_pair(start: list[int], prompt: list[int], completion: list[int], eos: int,
                max_length: int) -> dict | None:
    """``input_ids`` and ``labels`` of one pair: ``start + prompt + completion + [eos]``, the
    prompt cut from the left to fit ``max_length``; None when the completion and eos leave no
    room for one prompt token (the completion is never cut)."""
    answer = [*completion, eos]
    room = max_length - len(start) - len(answer)
    if room < 1 or not prompt:
        return None
    kept = [*start, *prompt[-room:]]
    return {"input_ids": kept + answer, "labels": [IGNORE] * len(kept) + answer,
            "cut": len(prompt) > room}


def tokenize_sft(splits: datasets.DatasetDict, tokenizer, max_length: int = 128, *,
                 chat_template: bool = False, source: str = "data") -> datasets.DatasetDict:
    """``input_ids`` / ``attention_mask`` / ``labels`` of every pair (``encode_pair``), unpadded,
    beside the ``prompt`` and ``completion`` texts (for the generations; the collator drops
    them). Rows whose completion does not fit are left out and recorded with the splits' other
    left-out rows (``source``: the dataset's name, for the messages).

    Raises:
        ValueError: one line for a tokenizer without an eos token, ``chat_template`` with a
            tokenizer that has none, ``max_length`` beyond the model's, or a split left empty.
    """
    check_length("max_length", max_length, tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "task='sft' ends every completion with the tokenizer's eos token, so that generation "
            "learns to stop, but this tokenizer has none; give a model whose tokenizer has one"
        )
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat_template=true needs a tokenizer with a chat template, and this model's has "
            "none; leave chat_template false (prompt, newline, completion)"
        )
    start = start_ids(tokenizer)

    def encode(batch):
        texts = [prompt_text(prompt, tokenizer, chat_template) for prompt in batch["prompt"]]
        prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "attention_mask": [], "labels": [], "fits": [], "cut": []}
        for prompt, completion in zip(prompts, completions):
            row = encode_pair(start, prompt, completion, eos, max_length)
            out["fits"].append(row is not None)
            out["cut"].append(bool(row and row["cut"]))
            ids, labels = (row["input_ids"], row["labels"]) if row else ([], [])
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    encoded = splits.map(encode, batched=True)
    too_long = (f"whose completion and eos token leave no room for the prompt in "
                f"max_length={max_length} (answers are never cut)")
    left_out = getattr(splits, "rows_left_out", None) or LeftOut(source)
    encoded, left_out = leave_out_rows(
        encoded, source, lambda row: None if row["fits"] else too_long, left_out=left_out)
    for name, split in encoded.items():
        cut = sum(split["cut"])
        if cut:
            logger.warning("%s split: %d of %d prompts cut from the left to fit max_length=%d "
                           "(the completions are whole)", name, cut, len(split), max_length)
    encoded = encoded.remove_columns(["fits", "cut"])
    return set_left_out(encoded, left_out if left_out.entries else None)


@dataclass(frozen=True)
class CompletionCollator:
    """Right-pads a batch: ``input_ids`` with ``pad_token_id``, ``attention_mask`` with 0,
    ``labels`` with -100; other columns are dropped."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(row["input_ids"]) for row in rows)

        def padded(key, fill):
            return torch.tensor([list(row[key]) + [fill] * (width - len(row[key]))
                                 for row in rows], dtype=torch.long)

        return {"input_ids": padded("input_ids", self.pad_token_id),
                "attention_mask": padded("attention_mask", 0),
                "labels": padded("labels", IGNORE)}


class RunSFTTrainer(RunTrainer):
    """``RunTrainer`` whose evaluation scores the completion tokens: the logits reduced to
    ``completion_predictions`` per batch, and ``<prefix>_loss`` the exact mean over the split's
    completion tokens (``recipes.launcher.metrics.completion``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("preprocess_logits_for_metrics", completion_predictions)
        super().__init__(*args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        for key in [key for key in output.metrics if key.endswith("_completion_loss")]:
            output.metrics[key.removesuffix("completion_loss") + "loss"] = output.metrics.pop(key)
        return output


def generation_rows(split: datasets.Dataset, count: int) -> list[int]:
    """The first ``count`` rows of ``split`` with distinct prompts, in split order."""
    rows, seen = [], set()
    for index, prompt in enumerate(split["prompt"]):
        if len(rows) == count:
            break
        if prompt not in seen:
            seen.add(prompt)
            rows.append(index)
    return rows


def generate_examples(trainer, tokenized: datasets.DatasetDict, model_args) -> list[dict] | None:
    """Greedy generations for the first ``model_args.generations`` distinct test prompts (module
    docstring: Generations); None where a single process cannot generate (FSDP, DeepSpeed)."""
    import torch

    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        if trainer.is_world_process_zero():
            print("notice: no generations under FSDP or DeepSpeed (sharded weights); "
                  "results.json records generations: null", flush=True)
        return None
    if not trainer.is_world_process_zero():
        return None  # rank 0 writes results.json; the others need not decode
    tokenizer, model = trainer.processing_class, trainer.model
    test = tokenized["test"]
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    model.eval()
    examples = []
    for index in generation_rows(test, model_args.generations):
        row = test[index]
        start = next(i for i, label in enumerate(row["labels"]) if label != IGNORE)
        ids = torch.tensor([row["input_ids"][:start]], device=device)
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=model_args.max_new_tokens, do_sample=False,
                                    num_beams=1, eos_token_id=eos,
                                    pad_token_id=tokenizer.pad_token_id)
        new = output[0, ids.shape[1]:].tolist()
        stopped = eos in new
        if stopped:
            new = new[:new.index(eos)]
        examples.append({"prompt": row["prompt"], "reference": row["completion"],
                         "generated": tokenizer.decode(new, skip_special_tokens=True),
                         "stopped": stopped})
    return examples
