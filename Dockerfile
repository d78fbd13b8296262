# One image for all five loraplex services. docker-compose.yml picks the service by its command:
#   python -m loraplex.{gateway,scheduler,prefill,decode,adapter_store} --flags ...
# No model weights are baked in: the base model directory is mounted at run time (docs/deploy.md).
FROM python:3.11-slim

# torch comes from PyTorch's own wheel index. The default is a CUDA 12.x build (the wheels bundle
# the CUDA runtime; the host needs only the NVIDIA driver and the NVIDIA Container Toolkit).
# Pick the cuXXX index that matches your driver (cu126, cu128, ...); on a CPU-only host build with
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (or: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu docker compose build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# e.g. --build-arg TORCH_SPEC=torch==2.8.0 to pin a version
ARG TORCH_SPEC=torch>=2.4

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Triton JIT-compiles a small C launcher for each kernel at run time: it needs a C compiler
# (python:3.11-slim already ships the Python headers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# 1) torch first: the largest layer, rebuilt only when the build args change.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

# 2) the project's dependencies, read from pyproject.toml (cached while only the code changes).
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['triton']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3) the project itself (a regular, non-editable install; .dockerignore keeps the context small).
COPY . .
RUN pip install ".[triton]" \
    && cd / && rm -rf /src

# Run as an unprivileged user; its home holds the Triton kernel cache.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin loraplex
USER loraplex
WORKDIR /home/loraplex

# gateway (8000) and adapter-store (8100); the scheduler and the workers talk over NATS only.
EXPOSE 8000 8100

# docker-compose.yml sets each service's command (python -m loraplex.<service> ...).
# `docker run --rm IMAGE loraplex env` lists the LORAPLEX_* variables.
CMD ["loraplex", "--help"]
