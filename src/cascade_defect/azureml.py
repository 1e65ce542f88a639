"""Scaling out: Azure Machine Learning YAML for the ``full`` training run, written, never submitted.

The ``full`` profile wants a GPU for hours; Azure ML provides one next to the data lake. This
module writes two files for the Azure ML CLI v2 (``az ml data create -f``, ``az ml job create
-f``): a ``uri_folder`` data asset pointing at the split folders in ADLS, and a command job that
installs this package from the uploaded code and calls ``cascade-defect train``. Each document is
validated by a pydantic model with ``extra="forbid"`` covering exactly the fields emitted, taken
from the published schemas (``data.schema.json``, ``commandJob.schema.json``), so a typo fails
here instead of at submission time.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cascade_defect.settings import PROFILES, find_project_root
from cascade_defect.storage import parse_abfss_url

logger = logging.getLogger(__name__)

DATA_SCHEMA = "https://azuremlschemas.azureedge.net/latest/data.schema.json"
COMMAND_JOB_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"

DATA_ASSET_FILE = "data-asset.yml"
TRAINING_JOB_FILE = "train-job.yml"

_ASSET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"
_ASSET_REFERENCE = re.compile(r"^azureml:[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]+|@latest)$")
_COMPUTE_REFERENCE = r"^azureml:[A-Za-z][A-Za-z0-9-]{1,31}$"
_EXPRESSION = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")

SpecT = TypeVar("SpecT", bound=BaseModel)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class DataAssetSpec(_Spec):
    """``data.schema.json``: a versioned pointer to the split folders in the data lake."""

    schema_url: Literal["https://azuremlschemas.azureedge.net/latest/data.schema.json"] = Field(
        DATA_SCHEMA, alias="$schema"
    )
    name: str = Field(pattern=_ASSET_NAME)
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str
    type: Literal["uri_folder"] = "uri_folder"
    path: str

    @field_validator("path")
    @classmethod
    def _abfss_folder(cls, value: str) -> str:
        parse_abfss_url(value)
        return value if value.endswith("/") else value + "/"

    @property
    def reference(self) -> str:
        """How a job input names this asset version: ``azureml:<name>:<version>``."""
        return f"azureml:{self.name}:{self.version}"


class JobInputSpec(_Spec):
    """One entry of a command job's ``inputs``; only data-asset folder inputs are emitted."""

    type: Literal["uri_folder"] = "uri_folder"
    path: str
    mode: Literal["ro_mount", "download"] = "download"

    @field_validator("path")
    @classmethod
    def _asset_reference(cls, value: str) -> str:
        if not _ASSET_REFERENCE.match(value):
            raise ValueError("must reference a data asset: azureml:<name>:<version> or @latest")
        return value


class JobResourcesSpec(_Spec):
    instance_count: int = Field(1, ge=1)
    shm_size: str = Field("16g", pattern=r"^[1-9][0-9]*[bkmg]$")


class CommandJobSpec(_Spec):
    """``commandJob.schema.json``: the fields this study sets for its training job."""

    schema_url: Literal["https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"] = (
        Field(COMMAND_JOB_SCHEMA, alias="$schema")
    )
    type: Literal["command"] = "command"
    display_name: str
    experiment_name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,255}$")
    description: str
    tags: dict[str, str] = Field(default_factory=dict)
    code: str
    command: str
    environment: str
    environment_variables: dict[str, str] = Field(default_factory=dict)
    compute: str = Field(pattern=_COMPUTE_REFERENCE)
    resources: JobResourcesSpec = Field(default_factory=JobResourcesSpec)
    inputs: dict[str, JobInputSpec]

    @field_validator("environment")
    @classmethod
    def _environment_reference(cls, value: str) -> str:
        if not _ASSET_REFERENCE.match(value):
            raise ValueError("must reference an environment: azureml:<name>:<version> or @latest")
        return value

    @model_validator(mode="after")
    def _command_matches_inputs(self) -> CommandJobSpec:
        used = {(kind, name) for kind, name in _EXPRESSION.findall(self.command)}
        unknown = sorted(
            name for kind, name in used if kind == "outputs" or name not in self.inputs
        )
        if unknown:
            raise ValueError(f"command references undeclared inputs/outputs: {unknown}")
        unused = sorted(set(self.inputs) - {name for kind, name in used if kind == "inputs"})
        if unused:
            raise ValueError(f"inputs never used by the command: {unused}")
        return self


@dataclass(frozen=True)
class AzureMLSpecs:
    """Where the two YAML files went, and what they say."""

    data_asset_path: Path
    job_path: Path
    data_asset: DataAssetSpec
    job: CommandJobSpec


def build_data_asset(
    splits_url: str,
    *,
    name: str = "neu-det-splits",
    version: str = "1",
    description: str = "NEU-DET split folders (seed, pool, golden test) of the study.",
) -> DataAssetSpec:
    return DataAssetSpec(name=name, version=version, description=description, path=splits_url)


def training_command(profile: str, data_expression: str = "${{inputs.data}}") -> str:
    """Install the uploaded code (so the job runs this commit), then call the training CLI."""
    install = "pip install --no-deps ."
    return f"{install} && cascade-defect train --profile {profile} --data {data_expression}"


def build_training_job(
    data_asset: DataAssetSpec,
    *,
    profile: str = "full",
    code: str = ".",
    compute: str = "azureml:gpu-cluster",
    environment: str = "azureml:cascade-defect-train@latest",
    experiment_name: str = "cascade-defect",
    input_mode: Literal["ro_mount", "download"] = "download",
) -> CommandJobSpec:
    """The command job for ``profile``; ``download`` suits many small images read every epoch."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    training = PROFILES[profile].training
    return CommandJobSpec(
        display_name=f"cascade-defect train ({profile})",
        experiment_name=experiment_name,
        description=(
            f"YOLOv8n on NEU-DET pseudo-labels, profile {profile!r}: {training.epochs} epochs at "
            f"{training.imgsz}px, batch {training.batch}."
        ),
        tags={"profile": profile, "data_asset": data_asset.reference},
        code=code,
        command=training_command(profile),
        environment=environment,
        # Azure ML uploads ./outputs when the job ends, so the run artefacts land there.
        environment_variables={"CASCADE_WORK_DIR": "./outputs"},
        compute=compute,
        # YOLO data-loader workers share batches through /dev/shm; Docker's default is too small.
        resources=JobResourcesSpec(instance_count=1, shm_size="16g"),
        inputs={"data": JobInputSpec(path=data_asset.reference, mode=input_mode)},
    )


def to_yaml(spec: BaseModel) -> str:
    return yaml.safe_dump(
        spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        sort_keys=False,
        allow_unicode=True,
    )


def load_spec(path: str | os.PathLike[str], model: type[SpecT]) -> SpecT:
    """Read a YAML file back into its model, so edited files are checked before submission."""
    return model.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def write_azureml_specs(
    out_dir: str | os.PathLike[str],
    splits_url: str,
    *,
    profile: str = "full",
    project_root: str | os.PathLike[str] | None = None,
    data_asset_name: str = "neu-det-splits",
    data_asset_version: str = "1",
    compute: str = "azureml:gpu-cluster",
    environment: str = "azureml:cascade-defect-train@latest",
    experiment_name: str = "cascade-defect",
) -> AzureMLSpecs:
    """Write ``data-asset.yml`` and ``train-job.yml`` into ``out_dir``; nothing is submitted.

    ``code`` in the job is the project root relative to ``out_dir`` (Azure ML resolves it from
    the YAML file's folder). Submit with ``az ml data create -f data-asset.yml`` and then
    ``az ml job create -f train-job.yml``.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(project_root) if project_root is not None else find_project_root() or Path.cwd()
    code = Path(os.path.relpath(Path(root).resolve(), folder.resolve())).as_posix()
    data_asset = build_data_asset(splits_url, name=data_asset_name, version=data_asset_version)
    job = build_training_job(
        data_asset,
        profile=profile,
        code=code,
        compute=compute,
        environment=environment,
        experiment_name=experiment_name,
    )
    data_asset_path = folder / DATA_ASSET_FILE
    job_path = folder / TRAINING_JOB_FILE
    data_asset_path.write_text(to_yaml(data_asset), encoding="utf-8")
    job_path.write_text(to_yaml(job), encoding="utf-8")
    logger.info("wrote Azure ML data asset %s and job %s", data_asset_path, job_path)
    return AzureMLSpecs(data_asset_path, job_path, data_asset, job)


EXAMPLE_RUN_URL = "abfss://neu-det@<account>.dfs.core.windows.net/cascade/runs/full"


def scaling_out_markdown(out_dir: str | os.PathLike[str], run_url: str = EXAMPLE_RUN_URL) -> str:
    """The book's scaling-out appendix body: the two validated specs, written and shown verbatim."""
    specs = write_azureml_specs(out_dir, run_url, profile="full")
    load_spec(specs.data_asset_path, DataAssetSpec)
    load_spec(specs.job_path, CommandJobSpec)
    return (
        f"The data asset (`{specs.data_asset_path.name}`), pointing at the `full` run folder in the lake:\n\n"
        f"```yaml\n{specs.data_asset_path.read_text()}```\n\n"
        f"The command job (`{specs.job_path.name}`) that trains and compares the models with the `full` "
        f"profile on a GPU cluster:\n\n```yaml\n{specs.job_path.read_text()}```\n"
    )
