"""results.json's schema (recipes.launcher.results): committed runs of version 0 read, unknown
keys survive a round trip, a file from a newer version or without its identity is refused."""

import json
from pathlib import Path

import pytest

from recipes.launcher.results import (
    SCHEMA_VERSION,
    MethodSpec,
    ResultsError,
    RunResults,
    read_results,
)

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "results" / "runs").rglob("results.json"))
IDENTITY = {"method": "freeze", "model": "minilm", "task": "classification", "seed": 0,
            "learning_rate": 1e-4}


def test_every_committed_run_reads_with_its_version_and_keeps_its_values():
    assert len(COMMITTED) > 100
    versions = set()
    for path in COMMITTED:
        data = json.loads(path.read_text())
        run = read_results(path)
        # a file written before the schema has no schema_version and reads as version 0
        assert run.schema_version == data.get("schema_version", 0) and run.path == str(path)
        versions.add(run.schema_version)
        assert run.extra == {}, f"{path}: keys the schema does not name: {sorted(run.extra)}"
        written = run.as_dict()
        # every key of the file comes back with its value; what the file lacks is a default
        assert {key: written[key] for key in data} == data
        assert set(written) - set(data) <= set(RunResults.__dataclass_fields__)  # no new metric
    assert versions == {0, SCHEMA_VERSION}  # runs from before the schema and from now
    # the fields a reader uses, by attribute
    run = read_results(next(p for p in COMMITTED if "/sweep/" not in p.as_posix()
                            and "/full/" in p.as_posix()))
    assert run.method == "full" and run.spec == MethodSpec("full")
    assert 0 < run.metrics["test_accuracy"] <= 1 and run.trainable_params == run.total_params


def test_missing_fields_default_and_unknown_keys_are_kept():
    data = {**IDENTITY, "policy": "bottom_n", "policy_options": {"n": 2},
            "eval_accuracy": 0.5, "a_future_figure": {"x": 1}, "schema_version": SCHEMA_VERSION}
    run = RunResults.from_dict(data)
    assert run.data is None and run.log_history == [] and run.versions == {}
    assert run.metrics == {"eval_accuracy": 0.5}
    assert run.extra == {"a_future_figure": {"x": 1}}
    assert run.spec == MethodSpec("freeze", "bottom_n", {"n": 2})
    again = RunResults.from_dict(run.as_dict())
    assert again == run and again.as_dict()["a_future_figure"] == {"x": 1}
    # the audit's figures are left out, not null, when the audit was off
    assert "frozen_audit_passed" not in run.as_dict() and run.as_dict()["data"] is None


def test_a_newer_version_a_missing_identity_and_a_broken_file_are_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**IDENTITY, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ResultsError, match=rf"^{path}: schema_version {SCHEMA_VERSION + 1} is "
                                           rf"newer than this code reads \({SCHEMA_VERSION}\)"):
        read_results(path)
    path.write_text(json.dumps({"method": "full", "model": "minilm"}))
    with pytest.raises(ResultsError, match=rf"^{path}: missing task, seed, learning_rate$"):
        read_results(path)
    path.write_text("{")
    with pytest.raises(ResultsError, match=rf"^{path}: not a readable JSON file"):
        read_results(path)
    path.write_text("[]")
    with pytest.raises(ResultsError, match=rf"^{path}: not a JSON object$"):
        read_results(path)


def test_the_launcher_cannot_write_a_key_the_schema_does_not_name():
    with pytest.raises(TypeError, match="a_new_figure"):
        RunResults(**IDENTITY, a_new_figure=1)
