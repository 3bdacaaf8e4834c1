"""Credentials in URLs never leave the process: `http://user:pass@host/v1` is written `http://***:***@host/v1`.

Whatever outlives a run goes through `redact`: the config artifacts (tasks.settings.config_to_yaml, which the
MLflow run and a registered model's bundle hold), everything tasks.tracking.log_record sends to MLflow, and the
messages of ConfigError and EndpointError. Scheme, host, port and path stay, so the record still says where the
run went. A credential written as environment references (`http://${LLM_USER}:${LLM_PASS}@host/v1`) is no
secret and is kept: tasks.endpoint expands the references when it creates a client, so a served model reaches
its endpoint with the variables of the machine that serves it.

A credential given with `ragtune ... --set` would reach Prefect's database as a flow parameter:
`hide_override_secrets` moves it into an environment variable of this process and leaves a `${...}` reference
in the override; tasks.settings puts it back (`reveal_hidden`) when the flow loads its config in this process.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

import yaml

from tasks.config_base import ConfigError

MASK = "***"
HIDDEN_PREFIX = "RAGTUNE_SECRET_"  # the environment variables hide_override_secrets writes
# scheme://userinfo@ -- the userinfo runs to the last "@" before the first "/" or blank: an unencoded "@", "?"
# or "#" in a password is masked too (masking a little more than the credential beats leaking part of it).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/\"]*)@")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ONLY_REFERENCES = re.compile(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\})+")
_HIDDEN_REFERENCE = re.compile(r"\$\{(" + HIDDEN_PREFIX + r"[A-Za-z0-9_]*)\}")


def _keeps_secret(part: str) -> bool:
    """A userinfo part that is a secret: not empty, not already masked, not made of `${...}` references only."""
    return bool(part) and part != MASK and _ONLY_REFERENCES.fullmatch(part) is None


def _mask(match: re.Match[str]) -> str:
    user, colon, password = match["userinfo"].partition(":")
    parts = [MASK if _keeps_secret(p) else p for p in (user, password)]
    return f"{match['scheme']}{parts[0]}{colon}{parts[1]}@"


def redact(text: str) -> str:
    """`text` with the user and password of every URL in it masked (`${...}` references kept)."""
    return _URL_USERINFO.sub(_mask, text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (mappings, lists, tuples, scalars) with every string in it, keys included, redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    return value


def has_masked_credentials(url: str) -> bool:
    """Whether `url` carries a credential that was masked when a config was persisted (it cannot be used)."""
    return any(MASK in m["userinfo"].split(":") for m in _URL_USERINFO.finditer(url))


def missing_references(text: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The `${NAME}` references in `text` whose environment variable is not set."""
    return [name for name in _REFERENCE.findall(text) if name not in environ]


def expand_references(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """`text` with each `${NAME}` replaced by the variable's value, as written (percent-encode what a URL needs);
    check `missing_references` first."""
    return _REFERENCE.sub(lambda m: environ[m[1]], text)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_").upper()


def _as_yaml_text(value: Any) -> str:
    """`value` as an override's right-hand side: a string as is where YAML reads it back unchanged, else JSON."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, default=str)


def _hide_one(text: str, environ: MutableMapping[str, str]) -> str:
    key, equals, raw = text.partition("=")
    if not equals or _URL_USERINFO.search(raw) is None:
        return text
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return text  # load_config rejects it with a (redacted) message
    occurrences = itertools.count(1)

    def stash(match: re.Match[str]) -> str:
        n = next(occurrences)
        stem = f"{HIDDEN_PREFIX}{_slug(key)}{'' if n == 1 else f'_{n}'}"
        user, colon, password = match["userinfo"].partition(":")
        parts = []
        for part, name in ((user, f"{stem}_USER"), (password, f"{stem}_PASSWORD")):
            if _keeps_secret(part):
                environ[name] = part
                part = f"${{{name}}}"
            parts.append(part)
        return f"{match['scheme']}{parts[0]}{colon}{parts[1]}@"

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _URL_USERINFO.sub(stash, node)
        if isinstance(node, Mapping):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    hidden = walk(value)
    return text if hidden == value else f"{key}={_as_yaml_text(hidden)}"


def hide_override_secrets(overrides: list[str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """`key.path=value` overrides with each literal URL credential moved into an environment variable of this
    process (RAGTUNE_SECRET_<KEY>_USER / _PASSWORD) and referenced as `${...}`: a flow called with them gets
    parameters (which Prefect stores) without the secret, and loads the same config as with the originals."""
    return [_hide_one(text, environ) for text in overrides]


def reveal_hidden(value: Any, key: str, environ: Mapping[str, str] = os.environ) -> Any:
    """The parsed value of override `key` with the credentials hide_override_secrets moved out put back; other
    `${...}` references stay, for tasks.endpoint to expand when it creates a client."""
    if isinstance(value, Mapping):
        return {k: reveal_hidden(v, key, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal_hidden(v, key, environ) for v in value]
    if not isinstance(value, str):
        return value
    for name in _HIDDEN_REFERENCE.findall(value):
        if name not in environ:
            raise ConfigError(
                f"override {key}: environment variable {name} is not set; it held a URL credential given with "
                "`--set` to another process. Write the credential as a ${VARIABLE} reference to a variable set "
                "where the flow runs (or give an API key with api_key_env).")
    return _HIDDEN_REFERENCE.sub(lambda m: environ[m[1]], value)
