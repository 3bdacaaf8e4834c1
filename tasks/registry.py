"""Loading a registered version without running anything stored in the registry: ragtune's one way in
(`ragtune ask`, the gateway, the retrain's re-scoring of the champion).

Anyone with write access to the tracking server can register a version of ragtune's model and point an alias
at it, so `load_version` trusts the registry for data only. It refuses (RegistryError, naming the version and
why) a version
- without ragtune's lineage tags (LINEAGE_TAGS: the promote stage writes them in the call that creates the
  version),
- whose MLmodel `python_function` flavor holds a pickled `python_model` (unpickling a cloudpickle runs code),
  or names no model code (ragtune registers models-from-code: tasks.serving_model),
- whose artifacts leave the model directory or include pickle-format files (an adapter is safetensors),
and builds the answerer from the version's artifacts (config, candidate, adapter, index) with the installed
ragtune code (tasks.serving.build_answerer). The version's code file and any code or pickle it ships are never
downloaded, imported or unpickled.

`remove_interrupted` deletes what a registration cut off before its tags left behind (ragtune's own
registrations are tagged atomically now; older ones were tagged after creating the version).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.errors import RegistryError
from tasks.serving import ARTIFACTS, CANDIDATE_ARTIFACT, CONFIG_ARTIFACT, build_answerer

if TYPE_CHECKING:
    from tasks.answering import AnswerSource

log = logging.getLogger("ragtune.registry")

# What every version ragtune registers carries (tasks.promotion.log_and_register): the candidate it serves and
# the content key of what it serves (candidate, adapter, index, data, evaluation set, config). The pipeline adds
# data_fingerprint, base_model, index_version, adapter_run, candidate_run_id and test_set.
LINEAGE_TAGS = ("candidate", "bundle_key")
PREVIOUS_CHAMPION = "previous_champion"  # registered-model tag: the version a promotion replaced (A/B rollback)
PYFUNC, PICKLED_MODEL, MODEL_CODE = "python_function", "python_model", "model_code_path"  # MLmodel keys
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib"})
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class LoadedVersion:
    """A registered version that passed the checks, built by the installed code."""

    version: ModelVersion
    candidate: str
    answerer: AnswerSource


def missing_lineage(version: ModelVersion) -> list[str]:
    """The lineage tags the version lacks (empty: registered by ragtune's promote stage)."""
    return [tag for tag in LINEAGE_TAGS if not version.tags.get(tag)]


def registered_version(name: str, alias: str | None = None, version: str | None = None) -> ModelVersion:
    """The version an alias points at (or the numbered version); RegistryError when there is none."""
    client = MlflowClient()
    if alias is not None:
        try:
            aliases = client.get_registered_model(name).aliases
        except MlflowException as err:
            if err.error_code != NOT_FOUND:
                raise
            aliases = {}
        if alias not in aliases:
            raise RegistryError(f"model {name} has no version with alias '{alias}': run `ragtune run` first")
        version = str(aliases[alias])
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code != NOT_FOUND:
            raise
        raise RegistryError(f"model {name} has no version {version}") from None


def check_lineage(version: ModelVersion) -> None:
    if missing := missing_lineage(version):
        raise RegistryError(
            f"model {version.name} version {version.version} lacks ragtune's lineage tags {', '.join(missing)}: "
            "ragtune's promote stage did not register it, so ragtune will not load it (register a version with "
            "`ragtune run` or `ragtune promote`)")


def check_flavor(mlmodel: dict, version: ModelVersion) -> dict:
    """The MLmodel's python_function flavor, if it is models-from-code without a pickled python_model."""
    where = f"model {version.name} version {version.version}"
    flavor = (mlmodel.get("flavors") or {}).get(PYFUNC)
    if not isinstance(flavor, dict):
        raise RegistryError(f"{where} has no {PYFUNC} flavor in its MLmodel: not a ragtune model")
    if flavor.get(PICKLED_MODEL):
        raise RegistryError(
            f"{where} holds a pickled python_model ({flavor[PICKLED_MODEL]}): loading it would run code stored in "
            "the registry, so ragtune refuses it; ragtune registers models-from-code versions (`ragtune run`)")
    if not flavor.get(MODEL_CODE):
        raise RegistryError(f"{where} names no model code ({MODEL_CODE}) in its MLmodel: not a ragtune model")
    return flavor


def _artifact_paths(flavor: dict, version: ModelVersion) -> dict[str, PurePosixPath]:
    """The artifacts ragtune reads, as paths inside the model directory."""
    where = f"model {version.name} version {version.version}"
    declared = flavor.get("artifacts") or {}
    missing = [name for name in (CONFIG_ARTIFACT, CANDIDATE_ARTIFACT) if name not in declared]
    if missing:
        raise RegistryError(f"{where} lacks the artifacts {', '.join(missing)}: not a ragtune model")
    paths = {}
    for name in ARTIFACTS:
        if name in declared:
            path = PurePosixPath(str(declared[name].get("path", "")))
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise RegistryError(f"{where}: artifact {name} points outside the model directory ({path})")
            paths[name] = path
    return paths


def _download(root: str, path: PurePosixPath, into: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{path}", dst_path=str(into)))


def _check_no_pickles(local: Path, name: str, version: ModelVersion) -> None:
    files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
    if pickles := sorted(p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES):
        raise RegistryError(f"model {version.name} version {version.version}: artifact {name} holds pickle-format "
                            f"files ({', '.join(pickles)}); ragtune loads adapters as safetensors only")


def load_version(name: str, alias: str | None = None, version: str | None = None) -> LoadedVersion:
    """The registered version under `alias` (or numbered `version`), checked and built by the installed code."""
    registered = registered_version(name, alias, version)
    check_lineage(registered)
    root = MlflowClient().get_model_version_download_uri(registered.name, registered.version)
    local = Path(tempfile.mkdtemp(prefix=f"ragtune-{registered.name}-{registered.version}-"))
    mlmodel = yaml.safe_load(_download(root, PurePosixPath("MLmodel"), local / "meta").read_text()) or {}
    flavor = check_flavor(mlmodel, registered)
    artifacts = {}
    for artifact, path in _artifact_paths(flavor, registered).items():
        artifacts[artifact] = _download(root, path, local / artifact)
        _check_no_pickles(artifacts[artifact], artifact, registered)
    described = json.loads(artifacts[CANDIDATE_ARTIFACT].read_text()).get("name")
    if described != registered.tags["candidate"]:
        raise RegistryError(f"model {name} version {registered.version} is tagged candidate "
                            f"{registered.tags['candidate']} but its {CANDIDATE_ARTIFACT} artifact says {described}")
    _, answerer = build_answerer({k: str(v) for k, v in artifacts.items()})
    return LoadedVersion(registered, described, answerer)


def remove_interrupted(name: str) -> list[str]:
    """Delete the versions of `name` that lack the lineage tags and have no alias (nor are the version a rollback
    returns to): registrations cut off before they were tagged. Returns the deleted version numbers."""
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != NOT_FOUND:
            raise
        return []
    kept = {str(v) for v in model.aliases.values()} | {model.tags.get(PREVIOUS_CHAMPION)}
    removed = []
    for found in client.search_model_versions(f"name = '{name}'"):
        if str(found.version) not in kept and (missing := missing_lineage(found)):
            client.delete_model_version(name, found.version)
            removed.append(str(found.version))
            log.warning("removed model %s version %s (source %s): it has no alias and lacks the lineage tags %s, "
                        "a registration interrupted before it was tagged", name, found.version, found.source,
                        ", ".join(missing))
    return removed
