"""Every YAML under configs/ validates: run configs parse, policies build, accelerate loads."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from freeze_policies import get_policy
from recipes.launcher.main import parse_args
from recipes.launcher.peft_methods import PEFT_METHODS, config_class

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml")
                     if not {"accelerate", "experiments"} & set(p.parts))
PROFILES = sorted((CONFIGS / "experiments").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def relative(path: Path) -> str:
    return str(path.relative_to(CONFIGS.parent))


def test_there_are_configs_for_every_method():
    names = {p.stem for p in RUN_CONFIGS if p.parent.name == "minilm"}
    assert {"full", "embeddings", "bottom_n", "bottom_n_2", "top_n", "all_but_head",
            "gradual_unfreeze", "bitfit", "lisa", "norm_only", "lora", "dora", "ia3",
            "prompt_tuning", "bottom_n_zero_lr", "bottom_n_zero_grad"} <= names
    assert {"cpu", "ddp", "ddp_cpu", "fsdp", "fsdp2", "deepspeed_zero2",
            "deepspeed_zero3"} <= {p.stem for p in ACCELERATE_CONFIGS}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=relative)
def test_run_config_parses_and_its_method_builds(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch ") and f"--config {relative(path)}" in first
    model_args, data_args, method, training = parse_args(["--config", str(path)])
    assert training.output_dir == f"outputs/{relative(path)[len('configs/'):-len('.yaml')]}"
    if method.method == "freeze":
        get_policy(method.policy, **method.policy_options)
    if method.method == "peft":
        fields = dataclasses.fields(config_class(method.peft_method))
        assert set(method.peft_options) <= {f.name for f in fields}


@pytest.mark.parametrize("name", list(PEFT_METHODS))
def test_every_peft_baseline_has_its_config_and_a_peft_class(name):
    import peft

    entry = PEFT_METHODS[name]
    assert issubclass(config_class(name), peft.PeftConfig)
    path = CONFIGS.parent / entry.config
    assert path in RUN_CONFIGS, f"{name}: {entry.config} is missing"
    method = parse_args(["--config", str(path)])[2]
    assert (method.method, method.peft_method) == ("peft", name)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=relative)
def test_accelerate_config_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file {relative(path)} recipes/run.py")
    config = yaml.safe_load(path.read_text())
    loaded = load_config_from_file(str(path))  # accelerate's own loader rejects unknown keys
    assert loaded.num_processes == config["num_processes"]
    assert config["distributed_type"] in {"NO", "MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert config["num_processes"] >= 1
    if config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 1:
        assert config["fsdp_config"]["fsdp_use_orig_params"] is True


@pytest.mark.parametrize("path", PROFILES, ids=relative)
def test_experiment_profile_cells_exist_and_fields_parse(path):
    from recipes.experiments.sweep import flags, load_profile

    assert path.read_text().startswith("# make compare")
    profile = load_profile(path)
    assert len(profile["seeds"]) >= 3
    for cell, spec in profile["cells"].items():
        spec = spec or {}
        config = CONFIGS / f"{cell}.yaml"
        assert config.is_file(), cell
        lrs = spec.get("lrs") or profile["lrs"][spec.get("lr_grid", "default")]
        assert lrs and all(lr > 0 for lr in lrs)
        fields = {**profile.get("common", {}), **spec.get("fields", {})}
        parse_args(["--config", str(config), *flags(fields)])


def test_missing_experiment_profile_is_a_clear_error():
    from recipes.experiments.sweep import load_profile
    from recipes.launcher.common import ConfigError

    with pytest.raises(ConfigError, match=r"experiment profile 'configs/experiments/nope.yaml' "
                       r"does not exist; profiles: .*default.yaml"):
        load_profile("configs/experiments/nope.yaml")


def test_the_depth_profile_pairs_with_the_default_profiles_cells():
    """configs/experiments/depth.yaml runs bottom_n n=1, 3, 5 and takes the other depths from
    the default profile's cells: they must train exactly what bottom_n n=0, 2, 4, 6 trains (on a
    6-block model like MiniLM), and both profiles must share the protocol (common fields, seeds,
    rate search), so their runs pair by seed with full fine-tuning's."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from freeze_policies import anatomy
    from recipes.experiments.sweep import load_profile

    depth = load_profile(CONFIGS / "experiments" / "depth.yaml")
    default = load_profile(CONFIGS / "experiments" / "default.yaml")
    for key in ("common", "seeds", "torch_threads", "sweep"):
        assert depth[key] == default[key], key
    assert depth["lrs"]["default"] == default["lrs"]["default"]

    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
        intermediate_size=37, vocab_size=99, num_labels=3))
    anat = anatomy(model)

    def trains(cell: str) -> set[str]:
        fields = yaml.safe_load((CONFIGS / f"{cell}.yaml").read_text())
        policy = get_policy(fields["policy"], **fields.get("policy_options", {}))
        return set(policy.trainable_names(anat))

    def bottom_n(n: int) -> set[str]:
        return set(get_policy("bottom_n", n=n).trainable_names(anat))

    taken = {0: "embeddings", 2: "bottom_n_2", 4: "bottom_n", 6: "all_but_head"}
    for n, cell in taken.items():
        assert f"tweets/minilm/{cell}" in default["cells"]
        assert trains(f"tweets/minilm/{cell}") == bottom_n(n), cell
    assert set(depth["cells"]) == {f"tweets/minilm/bottom_n_{n}" for n in (1, 3, 5)}
    for n in (1, 3, 5):
        assert trains(f"tweets/minilm/bottom_n_{n}") == bottom_n(n)
