"""ragtune's Prefect flows and CLI. Importing this package switches every library offline."""

import os

from tasks.offline import enable_offline_mode

enable_offline_mode()
# The temporary API server a serverless flow run starts needs more than Prefect's default 20 s
# on a busy 2-core machine; a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
