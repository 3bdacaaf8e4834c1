"""The base of every config section: strict (unknown keys are errors) and frozen."""

from pydantic import BaseModel, ConfigDict

from tasks.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
