"""Named policies: ``register_policy`` adds one, ``get_policy`` builds one from name + options."""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import TYPE_CHECKING, Any

from freeze_policies.errors import FreezePolicyError

if TYPE_CHECKING:
    from freeze_policies.policies import Policy

_POLICIES: dict[str, type[Policy]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_policy(name: str):
    """Class decorator: register a ``Policy`` dataclass under a unique lower-case ``name``."""
    if not _NAME.match(name):
        raise FreezePolicyError(f"policy name {name!r} must be lower-case letters, digits and _")
    if name in _POLICIES:
        raise FreezePolicyError(f"a policy named {name!r} is already registered")

    def decorate(cls):
        cls.name = name
        _POLICIES[name] = cls
        return cls

    return decorate


def list_policies() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(_POLICIES)


def policy_options(name: str) -> list[str]:
    """The option names a policy takes."""
    return [f.name for f in dataclasses.fields(_policy_class(name))]


def get_policy(name: str, **options: Any) -> Policy:
    """Build the policy registered as ``name`` with ``options`` (validated on construction)."""
    cls = _policy_class(name)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise FreezePolicyError(
            f"policy {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(valid)}"
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [option for option in required if option not in options]
    if missing:
        raise FreezePolicyError(f"policy {name!r} needs option {', '.join(missing)}")
    return cls(**options)


def _policy_class(name: str) -> type[Policy]:
    if not isinstance(name, str) or name not in _POLICIES:
        close = difflib.get_close_matches(str(name), _POLICIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FreezePolicyError(
            f"unknown policy {name!r}{hint}; valid policies: {', '.join(list_policies())}"
        )
    return _POLICIES[name]
