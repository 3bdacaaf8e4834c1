"""The models-from-code entry of every registered version (MLflow logs this file, not a pickle): loading a
version with `mlflow.pyfunc.load_model` or `mlflow models serve` runs it, and it serves with the installed
ragtune package. ragtune's own loading (tasks.registry) never runs it."""

from mlflow.models import set_model

from tasks.serving import RagtuneModel

set_model(RagtuneModel())
