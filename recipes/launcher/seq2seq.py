"""The launcher's ``--task seq2seq``: an encoder-decoder (``AutoModelForSeq2SeqLM``: T5, BART,
...) trained on source/target pairs.

Data (``load_seq2seq_splits``, through ``recipes.data.pairs.read_pairs``): ``"chatterbot"``
(embedded, offline) gives question/answer pairs, each consecutive pair of turns of a conversation
(turn i is the source, turn i + 1 its target), exact duplicate pairs dropped (first kept); a local
file or Hub dataset gives the pairs from ``source_column`` / ``target_column`` (default ``source``
/ ``target``), renamed to ``source`` and ``target``. Missing splits are carved and subsampled by
``recipes.data.splits``, seeded and not stratified, as for causal LM; pairs of one conversation
may land in different splits, as texts of one author do in the other tasks (``--task sft``
carves by prompt instead).

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

from recipes.data.files import set_left_out
from recipes.data.pairs import PairColumns, chatterbot_pairs, read_pairs
from recipes.data.sources import check_length
from recipes.data.splits import SplitSizes
from recipes.launcher.outputs import RunTrainer


class RunSeq2SeqTrainer(RunTrainer, Seq2SeqTrainer):
    """``RunTrainer`` (a ``FreezeTrainer``) with ``Seq2SeqTrainer``'s evaluation and prediction:
    freezing comes first in the method order, generation (when asked) from ``Seq2SeqTrainer``."""


def load_chatterbot_pairs() -> list[dict[str, str]]:
    """Question/answer pairs of the chatterbot corpus (``recipes.data.pairs.chatterbot_pairs``),
    as ``{"source": turn i, "target": turn i + 1}``."""
    return [{"source": source, "target": target} for source, target in chatterbot_pairs()]


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
        rows with an empty source or target are left out and recorded
        (``recipes.data.pairs.read_pairs``).

    Raises:
        ValueError: one line for a missing column (naming the flag and the columns there are),
            the two columns being one, ``"tweets"`` (no pairs), or bad fractions / sample counts.
    """
    sizes = SplitSizes(**split_options)
    names = PairColumns("source", "target", source_column, target_column,
                        "source_column", "target_column")
    raw, left_out = read_pairs(source, dataset_config, names)
    return set_left_out(sizes.carve(raw, stratify=False), left_out)


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
