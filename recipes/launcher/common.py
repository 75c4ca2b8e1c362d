"""What every script under ``recipes/`` shares: the error they raise for bad input and how it
ends the process, the environment they record, and how they write JSON.

- ``ConfigError`` is a ``ValueError`` whose message is one line naming the bad value and the valid
  choices; ``exit_on_user_error`` prints that line as ``error: ...`` on stderr and exits with
  status 2 (``USER_ERROR_EXIT``, as argparse does on a usage error; a crash exits 1).
- ``environment`` is the record of versions and hardware every results and benchmark file ends
  with, so that two files can be compared for where they ran.
- ``write_json_atomic`` never leaves a half-written file: a temporary file renamed into place.

This module imports torch lazily (``environment``), so the report and the sweep can use it
without loading torch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

USER_ERROR_EXIT = 2  # as argparse exits on a usage error; a crash exits 1
VERSIONED = ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate")


class ConfigError(ValueError):
    """Bad configuration: one line naming the bad value and the valid choices."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def exit_on_user_error(error: BaseException):
    """Bad input: one line ``error: ...`` and exit status 2, without a traceback.

    Under a multi-process launcher every process meets the same bad value, so only the first
    process of each machine (``LOCAL_RANK`` 0) prints; the others exit quietly with the same
    status. The launcher then reports the failed processes in its own words (torchrun treats any
    non-zero exit as a worker failure, and no worker can silence that), so under ``accelerate
    launch`` the line is set apart by blank lines and followed by one line saying that what
    follows is the launcher's. The line goes to stderr, except under ``accelerate launch``'s
    single-process launcher, which copies the child's stderr into its own exception: there it
    goes to stdout, so that it is printed once, not again inside the launcher's traceback.
    """
    if os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) == "0":
        line = f"error: {first_line(error)}"
        if under_accelerate_launch():
            stream = sys.stderr if "LOCAL_RANK" in os.environ else sys.stdout
            print(f"\n{line}\n{LAUNCHER_NOTICE}\n", file=stream, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT)


LAUNCHER_NOTICE = (
    f"(the line above is the whole error; exit status {USER_ERROR_EXIT}. What follows, if "
    "anything, is accelerate launch's report of that exit)"
)


LAUNCHER_VARIABLES = ("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "ACCELERATE_CONFIG_DS_FIELDS")


def under_accelerate_launch() -> bool:
    """Whether ``accelerate launch`` started this process: its launchers set
    ``ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION`` (DeepSpeed's: ``ACCELERATE_CONFIG_DS_FIELDS``),
    which ``TrainingArguments`` never sets in the process itself."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def parse_mapping(name: str, value) -> dict:
    """A mapping option given as a dict (YAML config) or as YAML / JSON text (a flag): the
    library's ``freeze_policies.policies.registry.parse_mapping``, its error as a
    ``ConfigError``."""
    from freeze_policies.errors import FreezePolicyError
    from freeze_policies.policies.registry import parse_mapping as parse

    try:
        return parse(name, value)
    except FreezePolicyError as error:
        raise ConfigError(str(error)) from None


def environment() -> dict:
    """Versions of the libraries a run depends on, the hardware and Python."""
    import torch

    hardware = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(0)
        hardware["gpu_count"] = torch.cuda.device_count()
    return {
        "versions": {name: version(name) for name in VERSIONED},
        "hardware": hardware,
        "python": platform.python_version(),
    }


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` through a temporary file renamed into place; the file gets
    the mode a plain ``open`` would give it (0666 less the umask). Keys are sorted, and values
    JSON does not know are written as their ``str``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "w") as out:
            json.dump(payload, out, indent=2, sort_keys=True, default=str)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
