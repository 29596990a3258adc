# GPU worker image for dr builds: PyTorch + CUDA runtime, Ray, and dr with `dr-build`.
# Build:  docker build -t dr:0.1 .
# Run:    docker run --gpus all --shm-size=16g -v /data:/data dr:0.1 reinforce /data/train ...
# (Ray keeps its object store in /dev/shm: give the container a large --shm-size.)
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/dr
COPY setup.cfg pyproject.toml README.md ./
COPY dr ./dr
COPY teachers ./teachers
COPY storage ./storage
COPY cli ./cli
# torch/torchvision come from the base image; the ranges in setup.cfg admit them.
# DL3013: this installs the local package (its ranges live in setup.cfg), not a PyPI name.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[remote]"

ENTRYPOINT ["dr-build"]
CMD ["--help"]
