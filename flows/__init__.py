"""ragtune's Prefect flows and CLI. Importing this package switches every library offline."""

from tasks.offline import enable_offline_mode

enable_offline_mode()
