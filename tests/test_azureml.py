"""Azure ML YAML for the ``full`` training run: validated, round-tripped, never submitted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cascade_defect.azureml import (
    COMMAND_JOB_SCHEMA,
    DATA_SCHEMA,
    CommandJobSpec,
    DataAssetSpec,
    build_data_asset,
    build_training_job,
    load_spec,
    write_azureml_specs,
)
from cascade_defect.settings import PROFILES

SPLITS_URL = "abfss://study@myacct.dfs.core.windows.net/cascade/runs/full/02_split"


@pytest.fixture
def specs(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    return write_azureml_specs(tmp_path / "project" / "azureml", SPLITS_URL, project_root=project)


def test_data_asset_points_at_the_split_folder(specs):
    document = yaml.safe_load(specs.data_asset_path.read_text())

    assert document == {
        "$schema": DATA_SCHEMA,
        "name": "neu-det-splits",
        "version": "1",
        "description": specs.data_asset.description,
        "type": "uri_folder",
        "path": SPLITS_URL + "/",
    }


def test_job_runs_the_training_cli_on_the_data_asset(specs):
    document = yaml.safe_load(specs.job_path.read_text())

    assert document["$schema"] == COMMAND_JOB_SCHEMA
    assert document["type"] == "command"
    assert document["command"].endswith(
        "cascade-defect train --profile full --data ${{inputs.data}}"
    )
    assert document["inputs"] == {
        "data": {"type": "uri_folder", "path": "azureml:neu-det-splits:1", "mode": "download"}
    }
    assert document["compute"].startswith("azureml:")
    assert document["environment"].startswith("azureml:")
    assert document["code"] == ".."  # the project root, relative to the YAML's folder
    assert document["environment_variables"] == {"CASCADE_WORK_DIR": "./outputs"}
    assert document["tags"]["profile"] == "full"


def test_written_files_round_trip_through_their_models(specs):
    assert load_spec(specs.data_asset_path, DataAssetSpec) == specs.data_asset
    assert load_spec(specs.job_path, CommandJobSpec) == specs.job


def test_models_reject_unknown_fields(specs):
    document = yaml.safe_load(specs.job_path.read_text())
    document["computer"] = document.pop("compute")

    with pytest.raises(ValidationError, match="computer"):
        CommandJobSpec.model_validate(document)


def test_command_must_use_exactly_the_declared_inputs(specs):
    document = yaml.safe_load(specs.job_path.read_text())
    document["command"] = "cascade-defect train --profile full --data ${{inputs.dataset}}"

    with pytest.raises(ValidationError, match="undeclared"):
        CommandJobSpec.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("compute", "gpu-cluster"),
        ("environment", "my-env"),
        ("type", "sweep"),
        ("$schema", "https://example.com/other.json"),
    ],
)
def test_job_fields_are_checked(specs, field: str, value: str):
    document = yaml.safe_load(specs.job_path.read_text())
    document[field] = value

    with pytest.raises(ValidationError):
        CommandJobSpec.model_validate(document)


def test_data_asset_requires_an_abfss_folder():
    with pytest.raises(ValidationError, match="abfss"):
        build_data_asset("https://myacct.blob.core.windows.net/study/splits")


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        build_training_job(build_data_asset(SPLITS_URL), profile="huge")


def test_job_description_reflects_the_profile_settings():
    training = PROFILES["full"].training

    job = build_training_job(build_data_asset(SPLITS_URL), profile="full")

    assert f"{training.epochs} epochs" in job.description
    assert f"{training.imgsz}px" in job.description
