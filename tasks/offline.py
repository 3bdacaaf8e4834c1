"""Offline and no-telemetry switches for every library ragtune drives.

Set before those libraries are imported: in the CLI entry point, the served model and test setup.
"""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",  # MLflow honours only "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def enable_offline_mode() -> None:
    """Force the offline/no-telemetry settings (overriding any inherited value)."""
    os.environ.update(OFFLINE_ENV)
