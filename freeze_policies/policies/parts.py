"""Part presets for encoder-decoder, speech and vision-language models: ``freeze_parts`` and
``train_parts`` freeze or train named parts (stacks, their embeddings / blocks / top, the
projector, the feature encoder; see ``Anatomy.part_names``)."""

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


@register_policy("freeze_parts")
@dataclass(kw_only=True)
class FreezeParts(Policy):
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
    """

    parts: list[str] | str | None = None
    policy: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        self.parts = _part_list("freeze_parts", self.parts)
        self.inner = None
        if self.policy is None:
            return
        spec = dict(self.policy) if isinstance(self.policy, dict) else None
        name = spec.pop("name", None) if spec else None
        if not isinstance(name, str):
            raise FreezePolicyError(f"freeze_parts: policy={self.policy!r} must be a mapping with "
                                    "a 'name' and that policy's options, e.g. {'name': "
                                    "'bottom_n', 'n': 2, 'stack': 'language_model'}")
        if name in ("freeze_parts", "train_parts", "auto_freeze"):
            raise FreezePolicyError(f"freeze_parts: policy {name!r} cannot be nested in "
                                    "freeze_parts; give its parts or options directly")
        passed = sorted(set(spec) & {"tied_weights", "blocks"})
        if passed:
            raise FreezePolicyError(f"freeze_parts: give {', '.join(passed)} to freeze_parts "
                                    "itself, not inside policy=")
        self.inner = get_policy(name, **spec)

    @property
    def scheduled(self) -> bool:
        return self.inner is not None and self.inner.scheduled

    def stage_at(self, step: int, epoch: float) -> int:
        return self.inner.stage_at(step, epoch) if self.scheduled else 0

    def num_stages(self, anat):
        return self.inner.num_stages(anat) if self.inner is not None else 1

    def select(self, anat, stage):
        frozen = _resolve_parts("freeze_parts", self.parts, anat)
        base = self.inner.select(anat, stage) if self.inner else set(anat.names())
        return set(base) - frozen


@register_policy("train_parts")
@dataclass(kw_only=True)
class TrainParts(Policy):
    """Trains only the named parts (names as for ``freeze_parts``); default: the head.

    ``parts=['projector']`` is LLaVA's first stage (the projector alone);
    ``['projector', 'language_model', 'head']`` its second (vision tower frozen).
    """

    parts: list[str] | str = field(default_factory=lambda: ["head"])

    def __post_init__(self):
        super().__post_init__()
        self.parts = _part_list("train_parts", self.parts)

    def select(self, anat, stage):
        return _resolve_parts("train_parts", self.parts, anat)
