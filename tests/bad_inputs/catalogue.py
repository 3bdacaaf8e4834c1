"""The catalogue of bad inputs (cases.yaml): read it, and lay one case out in a scratch directory with its own
data and its own config, whose stores (MLflow, caches, index, adapters) all live in that directory."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.bad_inputs.build import build

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MANIFEST = HERE / "cases.yaml"
TEMPLATE = ROOT / "configs" / "ci.yaml"
CONFIG_NAME = "ragtune-case.yaml"
KINDS = ("table", "squad", "hf", "config", "model")
SIDE_EFFECTS = ("index", "adapter", "registry")

Fragment = str | list[str]  # a list: any one of these alternatives


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    about: str
    args: list[str]
    expect: list[Fragment]
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    forbid: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)


def load_cases(path: Path = MANIFEST) -> list[Case]:
    """Every case of the manifest, checked for the fields the runner needs."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]
    cases = [Case(**entry) for entry in raw]
    for case in cases:
        if case.kind not in KINDS or not case.expect or not set(case.allow) <= set(SIDE_EFFECTS):
            raise ValueError(f"{path}: case {case.id} needs a kind in {KINDS}, expect fragments, and allow within "
                             f"{SIDE_EFFECTS}")
    return cases


@dataclass(frozen=True)
class Workspace:
    """One case's scratch directory: `data/`, the config, and the stores the config points at."""

    tmp: Path

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def config(self) -> Path:
        return self.tmp / CONFIG_NAME

    @property
    def index_root(self) -> Path:
        return self.tmp / "index"

    @property
    def adapter_root(self) -> Path:
        return self.tmp / "adapters"

    @property
    def mlflow_db(self) -> Path:
        return self.tmp / "mlflow.db"

    def expand(self, text: str) -> str:
        return text.replace("{config}", str(self.config)).replace("{data}", str(self.data)) \
            .replace("{tmp}", str(self.tmp))

    def argv(self, case: Case) -> list[str]:
        return [self.expand(arg) for arg in case.args]

    def fragments(self, case: Case) -> list[list[str]]:
        """Each expected fragment as its list of alternatives, placeholders filled in."""
        return [[self.expand(alt) for alt in ([f] if isinstance(f, str) else f)] for f in case.expect]


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def case_config(ws: Workspace) -> dict[str, Any]:
    """configs/ci.yaml with every store moved into the workspace; the converted model cache stays shared."""
    raw = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    return _merge(raw, {
        "model_cache": str(ROOT / ".cache" / "models"),
        "cache_root": str(ws.tmp / "cache"),
        "data": {"path": str(ws.data)},
        "index": {"root": str(ws.index_root)},
        "finetune": {"output_root": str(ws.adapter_root)},
        "mlflow": {"tracking_uri": f"sqlite:///{ws.mlflow_db}", "artifact_location": str(ws.tmp / "mlartifacts")},
    })


def _set_json(payload: Any, dotted: str, value: Any) -> None:
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    for key in parents:
        payload = payload[key]
    payload[last] = value


def _write_data(ws: Workspace, spec: dict[str, Any]) -> None:
    data = ws.data
    data.mkdir(parents=True)
    for dest, source in spec.get("copy", {}).items():
        source = HERE / source
        if source.is_dir():
            shutil.copytree(source, data / dest, dirs_exist_ok=True)
        else:
            shutil.copy(source, data / dest)
    for dest, text in spec.get("text", {}).items():
        (data / dest).parent.mkdir(parents=True, exist_ok=True)
        (data / dest).write_text(text, encoding="utf-8")
    for dest, replacements in spec.get("lines", {}).items():
        lines = (data / dest).read_text(encoding="utf-8").splitlines()
        for number, text in replacements.items():
            lines[int(number) - 1] = text
        (data / dest).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for dest, extra in spec.get("append", {}).items():
        with (data / dest).open("a", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in extra)
    for dest, updates in spec.get("json_set", {}).items():
        payload = json.loads((data / dest).read_text(encoding="utf-8"))
        for dotted, value in updates.items():
            _set_json(payload, dotted, value)
        (data / dest).write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    for name in spec.get("build", []):
        build(name, data)


def empty_mlflow_store(path: Path) -> Path:
    """An MLflow SQLite store with its tables created: a copy per case spares each case the ~7 s of migrations."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return path


def prepare(case: Case, tmp: Path, mlflow_store: Path | None = None) -> Workspace:
    """Lay the case out under `tmp` (which must be empty or absent) and return its workspace; `mlflow_store`:
    an empty store (`empty_mlflow_store`) to start from."""
    ws = Workspace(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    if mlflow_store is not None:
        shutil.copy(mlflow_store, ws.mlflow_db)
    _write_data(ws, case.data)
    if "text" in case.config:
        ws.config.write_text(case.config["text"], encoding="utf-8")
    else:
        config = _merge(case_config(ws), case.config.get("patch", {}))
        ws.config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return ws
