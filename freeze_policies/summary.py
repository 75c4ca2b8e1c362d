"""Per-group table of trainable and total parameters: what a run prints before training."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from freeze_policies.anatomy import Anatomy, anatomy


@dataclass(frozen=True)
class GroupCount:
    group: str
    trainable: int
    total: int


@dataclass(frozen=True)
class Summary:
    """Trainable / total parameter counts per anatomy group (a tied tensor counts once)."""

    model_class: str
    rows: list[GroupCount]

    @property
    def trainable(self) -> int:
        return sum(row.trainable for row in self.rows)

    @property
    def total(self) -> int:
        return sum(row.total for row in self.rows)

    def as_dict(self) -> dict:
        return {
            "trainable_params": self.trainable,
            "total_params": self.total,
            "groups": {row.group: [row.trainable, row.total] for row in self.rows},
        }

    def __str__(self) -> str:
        lines = [f"{'group':<12} {'trainable':>12} {'total':>12} {'%':>7}"]
        for row in [*self.rows, GroupCount("total", self.trainable, self.total)]:
            share = 100 * row.trainable / row.total if row.total else 0.0
            lines.append(f"{row.group:<12} {row.trainable:>12,} {row.total:>12,} {share:>6.2f}%")
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)


def summarize(model: nn.Module, anat: Anatomy | None = None) -> Summary:
    """Count the parameters of ``model`` that require grad now, per anatomy group."""
    anat = anat or anatomy(model)
    params = dict(model.named_parameters())
    rows = [
        GroupCount(
            group,
            sum(params[n].numel() for n in names if params[n].requires_grad),
            sum(params[n].numel() for n in names),
        )
        for group, names in anat.groups().items()
    ]
    return Summary(type(model).__name__, rows)
