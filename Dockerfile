# One image for every framepool service: worker, monitor, gateway, flower, callbacks.
# The service is the command: `docker run IMAGE worker --device cuda:0 --models shape_detector`.
#
# Base: python:3.11-slim-bookworm, not nvidia/cuda. The torch wheels on PyPI for
# Linux x86_64 are CUDA builds that bring their own CUDA runtime, cuBLAS and cuDNN
# as nvidia-* wheels, so a CUDA base image would only add a second copy of those
# libraries. All a container needs from the host is the driver, which the NVIDIA
# Container Toolkit mounts when the container asks for a GPU (compose
# `deploy.resources.reservations.devices`, k8s `nvidia.com/gpu`). The same image
# runs on a CPU-only host: torch falls back to the CPU.
FROM python:3.11-slim-bookworm

# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA Container Toolkit mounts, CUDA
# (compute) and NVML (utility: the worker's heartbeat reads its GPU through it).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# torch first, pinned as in the Makefile, so this large layer is cached across
# code changes; then the project itself (not editable).
ARG TORCH=torch==2.13.0
RUN pip install "${TORCH}"

WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY framepool ./framepool
COPY producer ./producer
COPY workers ./workers
COPY monitoring ./monitoring
COPY models ./models
COPY benchmarks ./benchmarks
RUN pip install . && rm -rf /src

# Not root. DATA_DIR (default .framepool) is relative to the home directory,
# which this user owns.
RUN useradd --create-home --uid 10001 --user-group framepool
USER 10001:10001
WORKDIR /home/framepool

# Services listen on 127.0.0.1 unless told otherwise (SERVER_HOST); in a
# container they must listen on every interface.
ENV SERVER_HOST=0.0.0.0 \
    LOG_FORMAT=json

# gateway (SERVER_PORT), monitor (MONITOR_PORT), flower (FLOWER_PORT)
EXPOSE 8000 8080 5555

# No HEALTHCHECK: one image runs services with different health endpoints
# (monitor GET /ready on 8080, gateway GET /health on 8000) and workers with
# none. docker-compose.yml declares a healthcheck per service and the k8s
# manifests declare probes (Kubernetes ignores a Dockerfile HEALTHCHECK).
ENTRYPOINT ["framepool"]
CMD ["--help"]
