"""The launcher's ``--task seq2seq``: an encoder-decoder (``AutoModelForSeq2SeqLM``: T5, BART,
...) trained on source/target pairs.

Data (``load_seq2seq_splits``): ``"chatterbot"`` (embedded, offline) gives question/answer pairs,
each consecutive pair of turns of a conversation (turn i is the source, turn i + 1 its target),
exact duplicate pairs dropped (first kept); a local file or Hub dataset gives the pairs from
``source_column`` / ``target_column`` (default ``source`` / ``target``), renamed to ``source`` and
``target``. Missing splits are carved and subsampled by ``recipes.data.splits``, seeded and not
stratified, as for causal LM; pairs of one conversation may land in different splits, as texts of
one author do in the other tasks.

Tokenization (``tokenize_seq2seq``): the source truncated to ``max_length``, the target through
``text_target=`` truncated to ``max_target_length``; no padding (``DataCollatorForSeq2Seq`` pads
per batch, the labels with -100, and builds ``decoder_input_ids`` from them through the model).
No ``token_type_ids``: encoder-decoders take none, even with a BERT-style tokenizer.

Training (``RunSeq2SeqTrainer``): the launcher's ``RunTrainer`` (``FreezeTrainer``: policies,
schedules, audit, resume) combined with ``transformers.Seq2SeqTrainer``. Evaluation is by loss:
``eval_loss`` / ``test_loss`` (mean cross-entropy per target token) and their perplexity.
``--predict_with_generate true`` (a ``Seq2SeqTrainingArguments`` flag, as are
``--generation_max_length`` and ``--generation_num_beams``) makes evaluation also generate, which
costs a decoding loop per batch; the launcher computes no text metric from the generations, so
what is reported stays the loss.
"""

from __future__ import annotations

import datasets
from transformers import Seq2SeqTrainer

from recipes.data.files import leave_out_rows, load_external, select_columns, set_left_out
from recipes.data.sources import check_length, load_chatterbot_conversations
from recipes.data.splits import SplitSizes
from recipes.launcher.outputs import RunTrainer


class RunSeq2SeqTrainer(RunTrainer, Seq2SeqTrainer):
    """``RunTrainer`` (a ``FreezeTrainer``) with ``Seq2SeqTrainer``'s evaluation and prediction:
    freezing comes first in the method order, generation (when asked) from ``Seq2SeqTrainer``."""


def load_chatterbot_pairs() -> list[dict[str, str]]:
    """Question/answer pairs of the chatterbot corpus: every consecutive pair of turns of every
    conversation, as ``{"source": turn i, "target": turn i + 1}``; exact duplicates dropped."""
    pairs = dict.fromkeys(
        (turns[i], turns[i + 1])
        for turns in load_chatterbot_conversations()
        for i in range(len(turns) - 1)
    )
    return [{"source": source, "target": target} for source, target in pairs]


def load_seq2seq_splits(
    source: str = "chatterbot",
    *,
    source_column: str = "source",
    target_column: str = "target",
    dataset_config: str | None = None,
    **split_options,
) -> datasets.DatasetDict:
    """``train`` / ``validation`` / ``test`` splits of source/target pairs (module docstring);
    ``split_options`` as for ``recipes.data.sources.load_causal_lm_splits`` (``SplitSizes``).

    Returns:
        A ``DatasetDict`` whose splits have exactly the string columns ``source`` and ``target``;
        rows with an empty source or target are dropped.

    Raises:
        ValueError: one line for a missing column (naming the flag and the columns there are),
            the two columns being one, ``"tweets"`` (no pairs), or bad fractions / sample counts.
    """
    sizes = SplitSizes(**split_options)
    if source == "tweets":
        raise ValueError(
            "source 'tweets' has no source/target pairs; use 'chatterbot', or a file or Hub "
            "dataset with --source_column and --target_column"
        )
    if source == "chatterbot":
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(load_chatterbot_pairs())})
    else:
        if source_column == target_column:
            raise ValueError(
                f"source_column and target_column are both {source_column!r}; name two "
                "different columns"
            )
        raw = load_external(source, dataset_config, (source_column, target_column))
        available = raw["train"].column_names
        for flag, column in (("source_column", source_column), ("target_column", target_column)):
            if column not in available:
                raise ValueError(
                    f"{flag}={column!r} is not a column of {source!r}; its columns: "
                    f"{', '.join(available)}"
                )
        raw = select_columns(raw, {source_column: "source", target_column: "target"})
    for column in ("source", "target"):
        raw = raw.cast_column(column, datasets.Value("string"))
    names = {"source": source_column, "target": target_column}

    def reason(row):
        for column in ("source", "target"):
            if not (row[column] and row[column].strip()):
                return f"with no {column} in column {names[column]!r}"
        return None

    raw, left_out = leave_out_rows(raw, source, reason)
    return set_left_out(sizes.carve(raw, stratify=False),
                        None if source == "chatterbot" else left_out)


def tokenize_seq2seq(
    splits: datasets.DatasetDict, tokenizer, max_length: int = 128, max_target_length: int = 64
) -> datasets.DatasetDict:
    """``input_ids`` / ``attention_mask`` of the source (at most ``max_length`` tokens) and
    ``labels`` of the target (``text_target=``, at most ``max_target_length``), unpadded."""
    check_length("max_length", max_length, tokenizer)
    check_length("max_target_length", max_target_length, tokenizer)

    def encode(batch):
        inputs = tokenizer(batch["source"], truncation=True, max_length=max_length,
                           return_token_type_ids=False)
        targets = tokenizer(text_target=batch["target"], truncation=True,
                            max_length=max_target_length, return_token_type_ids=False)
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                "labels": targets["input_ids"]}

    tokenized = splits.map(encode, batched=True, remove_columns=splits["train"].column_names)
    return set_left_out(tokenized, getattr(splits, "rows_left_out", None))


def load_seq2seq_model(name: str, path: str, **kwargs):
    """``AutoModelForSeq2SeqLM`` from ``path``. The launcher has already refused, from the config,
    a model type without one (``recipes.launcher.tasks.check_model_task``)."""
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
