# FaceSR inference image: FastAPI + ONNX Runtime, the models baked in, no torch.
#
# CPU (default):
#   docker build -t facesr:cpu .
# GPU (CUDA 13 + cuDNN 9, matching onnxruntime-gpu 1.31's CUDA 13 wheels):
#   docker build -t facesr:gpu --build-arg ORT_EXTRA=gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
#
# Build arguments:
#   BASE_IMAGE  any glibc Linux image with Python >= 3.11, or one where apt-get can install
#               python3 (the nvidia/cuda images). Default python:3.11-slim-bookworm.
#   ORT_EXTRA   cpu | gpu: which pyproject extra (requirements/serve-<extra>.txt) is installed.
#   WHEELHOUSE  a folder in the build context holding the locked wheels, for offline builds
#               (scripts/build_wheelhouse.sh). The default folder holds no wheels, and pip then
#               downloads the same hash-pinned files from PyPI.
#   PIP_INDEX_URL  the package index when there is no wheelhouse (default PyPI; a mirror works,
#               the hashes in the lock are checked either way).
#   MODELS      the model folder in the build context (x4/ x8/ x16/, each manifest.json + ONNX).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# CUDA images carry no Python: take the distribution's (Ubuntu 24.04: 3.12). A no-op elsewhere.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---------------------------------------------------------------------------------------------
FROM base AS builder
ARG ORT_EXTRA=cpu
ARG WHEELHOUSE=requirements
ARG MODELS=models
ARG PIP_INDEX_URL=https://pypi.org/simple
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip" >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# Dependencies first (the big, rarely changing layer): exactly the lock, hashes checked, wheels
# only, from the wheelhouse when one was given. pip itself is dropped from the result.
COPY requirements/serve-${ORT_EXTRA}.txt /tmp/requirements.txt
COPY ${WHEELHOUSE}/ /wheels/
RUN if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links=/wheels; \
    else set -- --index-url "$PIP_INDEX_URL"; fi \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes \
        --only-binary=:all: "$@" -r /tmp/requirements.txt \
    && /opt/venv/bin/pip uninstall --yes --quiet --disable-pip-version-check pip setuptools \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
        echo "torch must not be in the serving image" >&2; exit 1; fi

# Code and models: world-readable, owned by root, bytecode compiled now (the runtime user cannot
# write __pycache__).
COPY facesr_core/ /app/facesr_core/
COPY service/ /app/service/
COPY ${MODELS}/ /app/models/
RUN if [ -z "$(find /app/models -mindepth 2 -maxdepth 2 -name manifest.json)" ]; then \
        echo "no models: put x4/ x8/ x16/ (manifest.json + ONNX) in the build context's $MODELS/" >&2; \
        exit 1; fi \
    && find /app -name '__pycache__' -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q /app/facesr_core /app/service \
    && chmod -R u=rwX,go=rX /app

# ---------------------------------------------------------------------------------------------
FROM base AS runtime
ARG ORT_EXTRA=cpu
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="facesr" \
      org.opencontainers.image.description="Stochastic face super-resolution over HTTP (ONNX Runtime, ${ORT_EXTRA})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT (code); models: non-commercial research only"

RUN groupadd --gid 10001 facesr \
    && useradd --uid 10001 --gid facesr --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin facesr

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/models /app/models
COPY --from=builder /app/facesr_core /app/facesr_core
COPY --from=builder /app/service /app/service

# ORT_DISABLE_TELEMETRY: the official onnxruntime wheels (1.3x on Linux) otherwise start a 1DS
# telemetry uploader to mobile.events.data.microsoft.com and write a device id under $HOME.
ENV PATH=/opt/venv/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
    FACESR_MODEL_DIR=/app/models \
    FACESR_HOST=0.0.0.0 \
    FACESR_PORT=8000 \
    FACESR_PROVIDERS=auto
WORKDIR /app
USER 10001:10001
EXPOSE 8000

# 200 only once every model is loaded and warmed up. Python, not curl: slim bases have no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('FACESR_PORT', '8000'), timeout=4)"]

# `python -m service` runs uvicorn with the FACESR_* settings (the README lists them all).
CMD ["python", "-m", "service"]
