"""`pip install .`: the wheel holds the library, py.typed and the `freeze-policies` command, and
installed in a fresh virtual environment (reusing this environment's torch, transformers and the
bundled models instead of downloading them) it previews a bundled model outside the checkout."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, from a copy of the sources (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "freeze_policies", source / "freeze_policies",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--no-index", "-q", "-w", str(out),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = out.glob("freeze_policies-*.whl")
    return found


def test_the_wheel_holds_the_library_py_typed_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert "freeze_policies/py.typed" in names
    assert {"freeze_policies/examples.py", "freeze_policies/__main__.py",
            "freeze_policies/training/callbacks.py"} <= names
    assert not any(name.startswith(("recipes/", "tests/", "configs/")) for name in names)
    assert "[console_scripts]\nfreeze-policies = freeze_policies.__main__:main" in entry_points


def test_installed_in_a_fresh_environment_the_command_previews_a_bundled_model(wheel,
                                                                                tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the dependencies are this environment's (a path line, so its editable install of the
    # checkout, a .pth hook, is not loaded): only the wheel's copy of the library is importable
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(python), "-c", "import freeze_policies, freeze_policies.examples "
                            "as e; print(freeze_policies.__file__); print(e.model_path('minilm'))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    library, minilm = where.stdout.split()
    assert library.startswith(str(venv)) and Path(minilm, "config.json").is_file()
    shown = subprocess.run([str(venv / "bin" / "freeze-policies"), "minilm", "--policy",
                            "bottom_n", "--policy_options", '{"n": 4}'],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.startswith(f"model: minilm ({minilm}) (task classification)")
    assert "total           3,697,923   22,714,371  16.28%" in shown.stdout
    bad = subprocess.run([str(venv / "bin" / "freeze-policies"), "minilm", "--policy", "nope"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown policy 'nope'")
