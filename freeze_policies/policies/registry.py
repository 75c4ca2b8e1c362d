"""Named policies: ``register_policy`` adds one, ``get_policy`` builds one from name + options,
``resolve_policy`` accepts every form a user may hand over (a policy, a name, a spec mapping) and
``policy_spec`` writes the JSON form back."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import Policy

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


def resolve_policy(spec) -> Policy | None:
    """A ``Policy`` from a policy, a registered name, or a ``{"name": ..., **options}`` mapping."""
    if spec is None or isinstance(spec, Policy):
        return spec
    if isinstance(spec, str):
        return get_policy(spec)
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        options = dict(spec)
        return get_policy(options.pop("name"), **options)
    raise FreezePolicyError(
        f"freeze_policy={spec!r} is not a policy: pass get_policy(...), a policy name, "
        "or a dict {'name': ..., **options}"
    )


def policy_spec(policy: Policy | None) -> dict | None:
    """The JSON form of a policy: ``{"name": ..., **options}`` (what ``resolve_policy`` takes)."""
    if policy is None:
        return None
    return json.loads(json.dumps({"name": policy.name, **policy.options()}, default=str))


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


@functools.cache
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):  # a subclass: PyYAML's own SafeLoader stays as it is
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return Loader


def load_yaml(text: str):
    """YAML text as every config, profile and mapping flag of this project is read: PyYAML's
    safe loader, except that a number in exponent notation is a float wherever it is written
    (``1e-3``, ``2E5``, ``1.0e5``), as in JSON and YAML 1.2. PyYAML follows YAML 1.1, which
    reads those as strings, so ``policy_options: {threshold: 1e-3}`` or
    ``--policy_options '{"threshold": 1e-05}'`` would hand the policy the text ``'1e-3'``."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


def parse_mapping(name: str, value) -> dict:
    """A mapping option given as a dict (a YAML config) or as YAML / JSON text (a flag such as
    ``--policy_options``): ``None`` is ``{}``; anything that does not parse to a mapping is a
    one-line ``FreezePolicyError`` that says what it parsed as and shows an example. The launcher
    and ``python -m freeze_policies`` both parse their mapping flags here."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    import yaml

    example = 'e.g. --policy_options \'{"n": 4}\' or, in a YAML config, policy_options: {n: 4}'
    example = example.replace("policy_options", name.removeprefix("--"))
    try:
        parsed = load_yaml(value)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
        raise FreezePolicyError(
            f"{name}={value!r} does not parse as YAML or JSON ({problem}{where}); give a "
            f"mapping of option: value, {example}"
        ) from None
    if not isinstance(parsed, dict):
        kind = {list: "a list", str: "a plain string", type(None): "empty"}.get(
            type(parsed), f"a {type(parsed).__name__}")
        raise FreezePolicyError(
            f"{name}={value!r} parses as {kind} ({parsed!r}), not a mapping of option: value; "
            f"{example}"
        )
    return parsed
