"""The FLOP model against hand counts on a tiny BERT, and the byte measurements on real steps."""

import pytest
import torch
from tiny_models import TEST_CASES
from transformers import AutoConfig, AutoModelForSequenceClassification

from freeze_policies import FreezePolicyError, anatomy, get_policy, set_trainable, summarize
from freeze_policies.costs.flops import format_bytes, matmul_params, predict_cost
from freeze_policies.costs.measure import (
    gradient_bytes,
    optimizer_state_bytes,
    saved_for_backward_bytes,
)

DEPTH, BATCH, SEQ = 4, 2, 8
TOKENS = BATCH * SEQ
# Hand count for the tiny BERT below (hidden 32, 2 heads, intermediate 37, 3 labels):
# a block multiplies by query, key, value, attention output (32x32 each) and the two FFN
# matrices (37x32, 32x37); the head by the pooler (32x32) and the classifier (3x32); the
# embeddings are lookups only.
BLOCK_MATMUL = 4 * 32 * 32 + 2 * 37 * 32  # 6464
HEAD_MATMUL = 32 * 32 + 3 * 32  # 1120
BLOCK = 2 * BLOCK_MATMUL * TOKENS  # forward FLOPs of a block's matmuls
ATTENTION = 4 * BATCH * SEQ * SEQ * 32  # Q K^T and A V: 2 heads x 16 dims
HEAD = 2 * HEAD_MATMUL * TOKENS
FORWARD = DEPTH * (BLOCK + ATTENTION) + HEAD
FULL_STEP = FORWARD + (DEPTH * (BLOCK + 2 * ATTENTION) + HEAD) + (DEPTH * BLOCK + HEAD)


def tiny_bert():
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "bert",
        hidden_size=32,
        num_hidden_layers=DEPTH,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=99,
        num_labels=3,
    )
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def bert():
    model = tiny_bert()
    return model, anatomy(model)


def preview(model, anat, policy=None, **options):
    names = None if policy is None else get_policy(policy, **options).trainable_names(anat)
    if policy is None:
        names = [name for name, _ in model.named_parameters()]
    return predict_cost(model, names, anat, seq_len=SEQ, batch_size=BATCH)


def batch(vocab=99, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (BATCH, SEQ), generator=generator)
    labels = torch.randint(0, 3, (BATCH,), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_full_fine_tuning_matches_the_hand_count(bert):
    cost = preview(*bert)
    assert cost.forward_flops == FORWARD
    assert cost.input_grad_flops == DEPTH * (BLOCK + 2 * ATTENTION) + HEAD
    assert cost.weight_grad_flops == DEPTH * BLOCK + HEAD
    assert cost.step_flops == cost.full_step_flops == FULL_STEP
    assert cost.step_ratio == 1.0
    assert (cost.backward_stops_at, cost.blocks_with_backward) == ("embeddings", DEPTH)
    assert cost.attention_included


def test_bottom_n_runs_backward_only_down_to_the_lowest_trainable_block(bert):
    cost = preview(*bert, "bottom_n", n=2)
    assert cost.forward_flops == FORWARD  # a frozen bottom still runs forward
    assert cost.input_grad_flops == 2 * (BLOCK + 2 * ATTENTION) + HEAD
    assert cost.weight_grad_flops == 2 * BLOCK + HEAD
    assert (cost.backward_stops_at, cost.blocks_with_backward) == ("block.2", 2)
    assert cost.step_ratio == pytest.approx(
        (FORWARD + 2 * (BLOCK + 2 * ATTENTION) + HEAD + 2 * BLOCK + HEAD) / FULL_STEP
    )


def test_freezing_every_block_leaves_no_block_backward(bert):
    cost = preview(*bert, "bottom_n", n=DEPTH)
    assert cost.blocks_with_backward == 0
    assert cost.backward_stops_at == "head"
    assert cost.input_grad_flops == cost.weight_grad_flops == HEAD
    assert preview(*bert, "all_but_head") == cost  # the same trainable set, the same cost


def test_cost_falls_monotonically_as_more_of_the_bottom_is_frozen(bert):
    ratios = [preview(*bert, "bottom_n", n=n).step_ratio for n in range(DEPTH + 1)]
    assert all(lower < higher for lower, higher in zip(ratios[1:], ratios))
    assert preview(*bert, "all_but_head").step_ratio < ratios[2] < ratios[0] <= 1.0


def test_embedding_lookups_are_free_but_an_embedding_projection_is_not(bert):
    # BERT's embeddings only look rows up: freezing them saves no FLOPs (their weight gradient
    # is a scatter-add, counted as 0). ELECTRA's embeddings end in a 16 -> 32 projection.
    assert preview(*bert, "embeddings").step_ratio == 1.0
    electra = next(case for case in TEST_CASES if case.id == "electra-cls").build()
    anat = anatomy(electra)
    projection = 2 * TOKENS * 16 * 32
    cost = preview(electra, anat, "embeddings")
    assert cost.full_step_flops - cost.step_flops == 2 * projection  # its input and weight grads
    assert cost.step_ratio < 1.0


def test_a_tied_output_projection_is_a_matmul_of_the_head():
    gpt2 = next(case for case in TEST_CASES if case.id == "gpt2-lm").build()
    matmuls = matmul_params(gpt2)
    assert matmuls["lm_head.weight"] == 99 * 32
    assert "transformer.wte.weight" not in matmuls  # the lookup use of the same tensor
    cost = predict_cost(
        gpt2,
        get_policy("all_but_head", tied_weights="freeze").trainable_names(anatomy(gpt2))
        | {"transformer.ln_f.weight"},
        seq_len=SEQ,
        batch_size=BATCH,
    )
    assert cost.weight_grad_flops == 0  # the tied matrix is frozen; ln_f is elementwise
    assert cost.input_grad_flops == 2 * TOKENS * 99 * 32  # lm_head's input gradient only


def test_a_trainable_shared_table_makes_backward_reach_block_zero():
    deberta = next(case for case in TEST_CASES if case.id == "deberta-v2-cls").build()
    anat = anatomy(deberta)
    cost = predict_cost(deberta, get_policy("bottom_n", n=2).trainable_names(anat), anat)
    assert anat.shared and cost.blocks_with_backward == anat.depth


def test_lora_adapters_are_priced_as_matmuls():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_bert(),
        peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
    )
    cost = predict_cost(model, seq_len=SEQ, batch_size=BATCH)
    adapters = DEPTH * 2 * (4 * 32 + 32 * 4)
    classifier = 3 * 32  # modules_to_save: the trainable copy of the classifier
    assert cost.weight_grad_flops == 2 * TOKENS * (adapters + classifier)
    assert cost.blocks_with_backward == DEPTH and cost.backward_stops_at == "block.0"
    assert cost.forward_flops == FORWARD + 2 * TOKENS * (adapters + classifier)


def test_predicted_bytes_match_the_trainable_parameter_counts(bert):
    model, anat = bert
    names = get_policy("bottom_n", n=3).trainable_names(anat)
    cost = predict_cost(model, names, anat, seq_len=SEQ, batch_size=BATCH)
    trainable = sum(p.numel() for n, p in model.named_parameters() if n in names)
    total = sum(p.numel() for p in model.parameters())
    assert (cost.trainable_params, cost.total_params) == (trainable, total)
    assert cost.gradient_bytes == 4 * trainable
    assert cost.optimizer_state_bytes == 2 * 4 * trainable  # AdamW: two fp32 moments
    assert cost.parameter_bytes == 4 * total
    assert predict_cost(model, names, anat, state_slots=1).optimizer_state_bytes == 4 * trainable


def test_default_trainable_set_is_what_requires_grad_now():
    model = tiny_bert()
    get_policy("top_n", n=1).apply(model)
    cost = predict_cost(model, seq_len=SEQ, batch_size=BATCH)
    assert cost.trainable_params == summarize(model).trainable
    assert cost.blocks_with_backward == 1


def test_unknown_names_and_bad_shapes_are_refused(bert):
    model, anat = bert
    with pytest.raises(FreezePolicyError, match="not parameters"):
        predict_cost(model, ["nope.weight"], anat)
    with pytest.raises(FreezePolicyError, match="seq_len"):
        predict_cost(model, [], anat, seq_len=0)


def test_nothing_trainable_costs_a_forward_pass_only(bert):
    model, anat = bert
    cost = predict_cost(model, [], anat, seq_len=SEQ, batch_size=BATCH)
    assert cost.step_flops == FORWARD and cost.backward_stops_at is None


def test_preview_prints_and_serialises(bert):
    cost = preview(*bert, "bottom_n", n=2)
    text = str(cost)
    assert f"{cost.step_ratio:.2f} x full fine-tuning" in text
    assert "backward stops at block.2, through 2 of 4 blocks" in text
    assert f"{cost.trainable_params:,}" in text
    data = cost.as_dict()
    assert data["step_ratio"] == cost.step_ratio and data["step_flops"] == cost.step_flops
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(12) == "12 B"


def run_step(model, optimizer):
    model(**batch()).loss.backward()
    measured = gradient_bytes(model)
    optimizer.step()
    return measured


def test_measured_gradient_and_optimizer_bytes_after_a_real_adamw_step():
    model = tiny_bert()
    anat = anatomy(model)
    names = get_policy("bottom_n", n=2).trainable_names(anat)
    set_trainable(model, names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    grads = run_step(model, optimizer)
    numel = sum(p.numel() for p in trainable)
    cost = predict_cost(model, names, anat)
    assert grads == cost.gradient_bytes == 4 * numel
    assert optimizer_state_bytes(optimizer) == cost.optimizer_state_bytes == 2 * 4 * numel
    assert optimizer_state_bytes(optimizer, include_scalars=True) == 8 * numel + 4 * len(trainable)
    assert optimizer_state_bytes(optimizer, frozen) == 0


def test_an_lr_zero_group_still_holds_state_for_the_frozen_parameters():
    model = tiny_bert()
    names = get_policy("bottom_n", n=2).trainable_names(anatomy(model))
    trained = [p for n, p in model.named_parameters() if n in names]
    frozen = [p for n, p in model.named_parameters() if n not in names]
    optimizer = torch.optim.AdamW([{"params": trained}, {"params": frozen, "lr": 0.0}])
    run_step(model, optimizer)
    assert optimizer_state_bytes(optimizer, frozen) == 8 * sum(p.numel() for p in frozen)


def test_saved_for_backward_shrinks_as_the_bottom_is_frozen():
    model = tiny_bert()
    anat = anatomy(model)
    measured = {}
    for label, names in [
        ("full", anat.names()),
        ("bottom_n=2", get_policy("bottom_n", n=2).trainable_names(anat)),
        ("head", get_policy("all_but_head").trainable_names(anat)),
        ("nothing", []),
    ]:
        set_trainable(model, names)
        measured[label] = saved_for_backward_bytes(model, batch())
    assert measured["full"] > measured["bottom_n=2"] > measured["head"] > measured["nothing"] == 0
    assert all(p.grad is None for p in model.parameters())  # measuring trains nothing
