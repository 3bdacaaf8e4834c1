"""Index versions and adapters in a store every worker reaches, keyed by content.

Local disk stays the cache: a stage looks for its key locally, then in the store, and builds only
when neither holds it; what it builds it publishes. The store is any MLflow artifact location,
reached through MLflow's artifact repositories (so transports and credentials are MLflow's): the
tracking server's served artifacts (`mlflow-artifacts:/ragtune-store`, the default when the
tracking URI is an http(s) server), a shared path, `s3://bucket/prefix`, ... An entry counts only
once its `published.json` marker exists, and the marker is uploaded after the files, so a reader
never takes a half-uploaded entry; a download lands in a staging directory renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from tasks.atomic import atomic_directory
from tasks.errors import MissingArtifactError
from tasks.redaction import redact
from tasks.scale_settings import AUTO

MARKER = "published.json"
SERVED_STORE = "mlflow-artifacts:/ragtune-store"
log = logging.getLogger("ragtune.store")


class ArtifactStore:
    """Directories under `<uri>/<kind>/<key>/`, each complete once its marker is there."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def _repository(self):
        return get_artifact_repository(self.uri)

    def has(self, kind: str, key: str) -> bool:
        return any(Path(f.path).name == MARKER for f in self._repository().list_artifacts(f"{kind}/{key}"))

    def publish(self, kind: str, key: str, directory: Path) -> bool:
        """Upload `directory` as `kind/key` unless the store has it; True if this call uploaded it. A store that
        cannot be reached costs other machines a rebuild, not this run: it is logged, not raised."""
        try:
            if self.has(kind, key):
                return False
            repository = self._repository()
            repository.log_artifacts(str(directory), f"{kind}/{key}")
            with tempfile.TemporaryDirectory() as tmp:
                marker = Path(tmp) / MARKER
                marker.write_text(json.dumps({"key": key, "host": socket.gethostname(),
                                              "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
                repository.log_artifact(str(marker), f"{kind}/{key}")
        except Exception as err:  # noqa: BLE001 - any transport's failure; the local result stands
            log.warning("could not publish %s %s to %s (%s): other machines will build it themselves", kind, key,
                        redact(self.uri), err)
            return False
        log.info("published %s %s to %s", kind, key, redact(self.uri))
        return True

    def fetch(self, kind: str, key: str, target: Path) -> bool:
        """Download `kind/key` to `target` (written completely or not at all); False if the store lacks it or
        cannot be reached (then the stage builds it here)."""
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            if not self.has(kind, key):
                return False
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=Path(target).parent) as tmp, \
                    atomic_directory(target) as staging:
                downloaded = Path(self._repository().download_artifacts(f"{kind}/{key}", dst_path=tmp))
                for item in downloaded.iterdir():
                    if item.name != MARKER:
                        shutil.move(str(item), staging / item.name)
        except Exception as err:  # noqa: BLE001 - any transport's failure; building here is always possible
            log.warning("could not fetch %s %s from %s (%s): building it here", kind, key, redact(self.uri), err)
            return False
        log.info("fetched %s %s from %s", kind, key, redact(self.uri))
        return True


def store_uri(setting: str | None, tracking_uri: str) -> str | None:
    """The store a config names (`scale.store`), with 'auto' resolved against the tracking URI."""
    if setting == AUTO:
        return SERVED_STORE if tracking_uri.startswith(("http://", "https://")) else None
    return setting


def configured_store(setting: str | None) -> ArtifactStore | None:
    """The store for `scale.store`, against the tracking URI MLflow uses now (None: local only)."""
    uri = store_uri(setting, mlflow.get_tracking_uri())
    return ArtifactStore(uri) if uri else None


def local_copy(path: str | Path, root: Path, kind: str, store: ArtifactStore | None) -> Path:
    """`path` (an index version or adapter directory, named by its content key) on this machine: as given,
    else under `root`, fetched from the store if needed. A stage on another machine (a Dask worker) gets
    the paths of the machine that built them."""
    path, local = Path(path), Path(root) / Path(path).name
    for candidate in (path, local):
        if candidate.is_dir():
            return candidate
    if store is not None and store.fetch(kind, path.name, local):
        return local
    raise MissingArtifactError(f"{kind} {path.name} is neither at {path} nor under {root} on this machine, and no "
                               "shared store has it (config key scale.store)")
