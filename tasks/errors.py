"""The one family of expected failures: input the user can fix (data, config, override, model source,
endpoint, registry). The CLI prints such an error's message once, without a traceback, and exits 2;
Prefect records the run as failed without retrying it (the same input fails the same way)."""


class UserError(Exception):
    """An expected failure; the message names the file, record and rule, and the config key that relaxes it."""


class RegistryError(UserError, LookupError):
    """The model registry holds nothing ragtune may load under this name or alias."""


class MissingArtifactError(UserError, FileNotFoundError):
    """Something a command needs has not been built yet (an index, an adapter) or cannot be fetched."""
