"""Per-group table of trainable and total parameters: what a run prints before training."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from freeze_policies.structure.discover import Anatomy, anatomy


@dataclass(frozen=True)
class GroupCount:
    group: str
    trainable: int
    total: int


@dataclass(frozen=True)
class Summary:
    """Trainable / total parameter counts per anatomy group (a tied tensor counts once).

    For a model with several stacks of blocks the rows are the parts (``encoder.block.0``,
    ``projector`` ...; see ``Anatomy.parts``) and ``stacks`` describes each stack (name, depth,
    blocks, feature encoder, what it feeds), printed one line each above the table; a
    single-stack model has the flat groups and no ``stacks``.
    """

    model_class: str
    rows: list[GroupCount]
    stacks: tuple[str, ...] = ()
    depths: tuple[tuple[str, int], ...] = ()

    @property
    def trainable(self) -> int:
        return sum(row.trainable for row in self.rows)

    @property
    def total(self) -> int:
        return sum(row.total for row in self.rows)

    def as_dict(self) -> dict:
        out = {
            "trainable_params": self.trainable,
            "total_params": self.total,
            "groups": {row.group: [row.trainable, row.total] for row in self.rows},
        }
        if self.depths:
            out["stacks"] = dict(self.depths)
        return out

    def __str__(self) -> str:
        width = max(12, *(len(row.group) for row in self.rows))
        lines = [f"{'group':<{width}} {'trainable':>12} {'total':>12} {'%':>7}"]
        for row in [*self.rows, GroupCount("total", self.trainable, self.total)]:
            share = 100 * row.trainable / row.total if row.total else 0.0
            lines.append(
                f"{row.group:<{width}} {row.trainable:>12,} {row.total:>12,} {share:>6.2f}%"
            )
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines[:0] = [f"stack {line}" for line in self.stacks]
        return "\n".join(lines)


def summarize(model: nn.Module, anat: Anatomy | None = None) -> Summary:
    """Count the parameters of ``model`` that require grad now, per anatomy group (per part when
    the model has several stacks)."""
    anat = anat or anatomy(model)
    params = dict(model.named_parameters())
    rows = [
        GroupCount(
            group,
            sum(params[n].numel() for n in names if params[n].requires_grad),
            sum(params[n].numel() for n in names),
        )
        for group, names in anat.parts().items()
    ]
    several = len(anat.stacks) > 1
    return Summary(
        type(model).__name__,
        rows,
        stacks=tuple(stack.describe() for stack in anat.stacks) if several else (),
        depths=tuple((stack.name, stack.depth) for stack in anat.stacks) if several else (),
    )
