"""Part presets: ``freeze_parts`` and ``train_parts`` freeze or train named parts (stacks, their
embeddings / blocks / top, the projector, the feature encoder, the vision-language presets
``vision_tower`` / ``projector`` / ``language_model`` / ``head``, and the parts inside every block
by role: ``attention``, ``mlp``, ``norms``, ``router``, ``experts``, ``shared_experts``; see
``Anatomy.part_names``). Both compose with a block policy through ``policy=``: ``train_parts``
keeps what both train (the MLPs of the top 4 blocks), ``freeze_parts`` removes the parts from
what the policy trains (every block but its router)."""

from __future__ import annotations

from dataclasses import dataclass, field

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import Policy
from freeze_policies.policies.registry import get_policy, register_policy
from freeze_policies.structure.discover import Anatomy


def _part_list(policy: str, parts) -> list[str] | None:
    if parts is None:
        return None
    parts = [parts] if isinstance(parts, str) else parts
    if not isinstance(parts, (list, tuple)) or not parts:
        raise FreezePolicyError(f"{policy}: parts={parts!r} must be a part name or a non-empty "
                                "list of them, e.g. parts=['encoder'] or ['vision_tower', "
                                "'projector']")
    return list(parts)


def _resolve_parts(policy: str, parts: list[str] | None, anat: Anatomy) -> set[str]:
    if parts is None:  # the model's only stack
        if len(anat.stacks) != 1:
            raise FreezePolicyError(
                f"{policy}: {anat.model_class} has {len(anat.stacks)} stacks "
                f"({', '.join(anat.stack_names())}); pass parts=[...] from: "
                f"{', '.join(anat.part_choices())}"
            )
        parts = [anat.stacks[0].name]
    return {name for part in parts for name in anat.part_names(part, policy)}


def _inner_policy(policy: str, spec) -> Policy | None:
    """The block policy a part policy composes with (``policy=``), built and validated."""
    if spec is None:
        return None
    options = dict(spec) if isinstance(spec, dict) else None
    name = options.pop("name", None) if options else None
    if not isinstance(name, str):
        raise FreezePolicyError(f"{policy}: policy={spec!r} must be a mapping with "
                                "a 'name' and that policy's options, e.g. {'name': "
                                "'bottom_n', 'n': 2, 'stack': 'language_model'}")
    if name in ("freeze_parts", "train_parts", "auto_freeze"):
        raise FreezePolicyError(f"{policy}: policy {name!r} cannot be nested in "
                                f"{policy}; give its parts or options directly")
    passed = sorted(set(options) & {"tied_weights", "blocks"})
    if passed:
        raise FreezePolicyError(f"{policy}: give {', '.join(passed)} to {policy} "
                                "itself, not inside policy=")
    return get_policy(name, **options)


class _Composed:
    """The schedule of the composed policy, if any (shared by both part policies)."""

    @property
    def scheduled(self) -> bool:
        return self.inner is not None and self.inner.scheduled

    def stage_at(self, step: int, epoch: float) -> int:
        return self.inner.stage_at(step, epoch) if self.scheduled else 0

    def num_stages(self, anat):
        return self.inner.num_stages(anat) if self.inner is not None else 1


@register_policy("freeze_parts")
@dataclass(kw_only=True)
class FreezeParts(_Composed, Policy):
    """Freezes the named parts of the model; everything else trains (or what ``policy`` trains).

    ``parts``: stack names (``encoder``, ``decoder``, ``vision_tower``, ``language_model``,
    ``text_model`` ...: the whole stack, its embeddings, blocks and top), ``<stack>.embeddings``,
    ``<stack>.blocks``, ``<stack>.top``, ``embeddings``, ``head``, ``projector`` and
    ``feature_encoder`` (see ``Anatomy.part_names``); default: the model's only stack. The
    recipes: ``parts=['encoder']`` (Whisper's ``freeze_encoder()``), ``['feature_encoder']``
    (wav2vec2's ``freeze_feature_encoder()``), ``['vision_tower']`` (ms-swift's ``freeze_vit``),
    ``['language_model', 'head']`` (``freeze_llm``), ``['projector']`` (``freeze_aligner``).

    ``policy`` composes: a policy spec (``{"name": "bottom_n", "n": 2, "stack":
    "language_model"}``) whose trainable set, at every stage of its schedule, is cut by the
    frozen parts. ``tied_weights`` and ``blocks`` are given here, not inside ``policy``.
    ``parts=['router']`` trains every parameter but the routers of a mixture of experts.
    """

    parts: list[str] | str | None = None
    policy: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        self.parts = _part_list("freeze_parts", self.parts)
        self.inner = _inner_policy("freeze_parts", self.policy)

    def select(self, anat, stage):
        frozen = _resolve_parts("freeze_parts", self.parts, anat)
        base = self.inner.select(anat, stage) if self.inner else set(anat.names())
        return set(base) - frozen


@register_policy("train_parts")
@dataclass(kw_only=True)
class TrainParts(_Composed, Policy):
    """Trains only the named parts (names as for ``freeze_parts``); default: the head.

    ``parts=['projector']`` is LLaVA's first stage (the projector alone);
    ``['projector', 'language_model', 'head']`` its second (vision tower frozen);
    ``['attention', 'mlp']`` LLaMA-Factory's ``freeze_trainable_modules: self_attn,mlp`` on every
    block. ``policy`` composes: only what both the parts and the policy train, at every stage
    (``parts=['mlp'], policy={'name': 'top_n', 'n': 4}``: the MLPs of the top 4 blocks).
    """

    parts: list[str] | str = field(default_factory=lambda: ["head"])
    policy: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        self.parts = _part_list("train_parts", self.parts)
        self.inner = _inner_policy("train_parts", self.policy)

    def select(self, anat, stage):
        chosen = _resolve_parts("train_parts", self.parts, anat)
        if self.inner is None:
            return chosen
        return chosen & set(self.inner.select(anat, stage))
