# One image for all five loraplex services. docker-compose.yml and the Helm chart pick the service
# by its command:  python -m loraplex.{gateway,scheduler,prefill,decode,adapter_store} --flags ...
# No model weights are baked in: the base model directory is mounted read-only at run time
# (compose: a read_only bind mount at /models/model; the chart: a readOnly volume; docs/deploy.md).
FROM python:3.11-slim

# torch is pinned to the version the project is tested with, from PyTorch's own wheel index. The
# default is a CUDA 12.8 build (the wheels bundle the CUDA runtime; the host needs only the NVIDIA
# driver, >= 570, and the NVIDIA Container Toolkit). Triton is whatever that torch wheel requires
# (torch's CUDA wheels pin it exactly), frozen below so the project's own `triton>=3.0` cannot move
# it. A CPU-only image for trying it out:
#   docker build --build-arg TORCH_VARIANT=cpu -t loraplex:cpu .
#   (or: TORCH_VARIANT=cpu docker compose build)
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# CPU wheels of torch do not require triton; the CPU image gets the one the CPU test suite runs
# its kernels with (TRITON_INTERPRET), pinned too.
ARG TRITON_CPU_VERSION=3.9.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Triton JIT-compiles a small C launcher for each kernel at run time: it needs a C compiler
# (python:3.11-slim already ships the Python headers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# 1) torch first: the largest layer, rebuilt only when the build args change. Its exact torch and
#    triton go into a constraints file that every later pip install in the image obeys.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && (pip show triton >/dev/null 2>&1 || pip install "triton==${TRITON_CPU_VERSION}") \
    && mkdir -p /etc/loraplex \
    && pip freeze | grep -iE '^(torch|triton)==' > /etc/loraplex/constraints.txt \
    && cat /etc/loraplex/constraints.txt \
    && python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
ENV PIP_CONSTRAINT=/etc/loraplex/constraints.txt

# 2) the project's dependencies, read from pyproject.toml (cached while only the code changes).
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['triton']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3) the project itself (a regular, non-editable install; .dockerignore keeps the context small),
#    then the scheduler's hot modules compiled with mypyc next to it (tooling/build_native.py;
#    mypy is only needed for that, so it leaves again).
COPY . .
RUN pip install ".[triton,native]" \
    && python -m loraplex.tooling.build_native --quiet \
    && pip uninstall -y -q mypy \
    && cd / && rm -rf /src

# Run as an unprivileged user (uid 10001; the chart's securityContext names the same uid); its
# home holds the Triton kernel cache. /models is where the model is mounted, read-only;
# /var/cache/loraplex holds each worker's adapter copies (--adapter-disk-cache).
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin loraplex \
    && mkdir -p /models /var/lock/loraplex /var/cache/loraplex \
    && chown loraplex:loraplex /var/lock/loraplex /var/cache/loraplex
USER 10001:10001
WORKDIR /home/loraplex
ENV LORAPLEX_GPU_LEASE_DIR=/var/lock/loraplex

# gateway (8000, metrics 8002) and adapter-store (8100); scheduler and workers talk over NATS and
# serve only their health/metrics ports (docs/deploy.md).
EXPOSE 8000 8002 8100

# docker-compose.yml sets each service's command (python -m loraplex.<service> ...).
# `docker run --rm IMAGE loraplex env` lists the LORAPLEX_* variables.
CMD ["loraplex", "--help"]
