# GPU worker image for dr builds: PyTorch + CUDA runtime, Ray, and dr (`dr-build`, `ray`).
#   docker build -t dr:0.2.0 .
#   docker run --gpus all --shm-size=16g -v /data:/data dr:0.2.0 reinforce /data/train ...
# Ray keeps its object store in /dev/shm: give every container a large --shm-size.
# The base image pins CUDA and torch; docker/constraints.txt pins every other dependency to
# the versions the test suite ran with.
# A build host's pip settings (a private index, its CA bundle) go in as build secrets, mounted for
# each installing RUN step only and kept in no layer; without them pip uses its defaults:
#   docker build --secret id=pip.conf,src=build-pip.conf --secret id=ca.crt,src=ca.pem -t dr:0.2.0 .
# (build-pip.conf: `[global]`, `index-url = ...`, `cert = /etc/pip-build-ca.crt`; docs/docker.md.
# docker/build-image.sh does this with buildah, from this machine's own pip configuration.)
# OCI labels: the version and the commit come as build args (docker/build-image.sh passes both):
#   docker build --build-arg VERSION=0.2.0 --build-arg REVISION=$(git rev-parse HEAD) -t dr:0.2.0 .
# The base is pinned by tag; pin it by digest too with --build-arg BASE_IMAGE=pytorch/pytorch:TAG@sha256:...
# (docs/docker.md). Its CUDA 13 torch runs on GPUs of compute capability 7.5 (Turing) or newer.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY dr ./dr
COPY teachers ./teachers
COPY storage ./storage
COPY cli ./cli
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca.crt,target=/etc/pip-build-ca.crt \
    pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
COPY docker/constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /tmp/wheels
# DL3013: the constraints file pins every version; the wheel is this repository's package.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca.crt,target=/etc/pip-build-ca.crt \
    pip install --no-cache-dir -c /tmp/constraints.txt /tmp/wheels/*.whl "ray[default]" fsspec s3fs \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && useradd --create-home --uid 1000 --shell /bin/bash dr
USER 1000:1000
WORKDIR /home/dr
ENTRYPOINT ["dr-build"]
CMD ["--help"]
# Last, so that a new version or commit leaves the cached steps above valid. SOURCE is a
# placeholder: setup.cfg names no repository URL.
ARG SOURCE=https://github.com/dr-reinforce/dr
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dr" \
      org.opencontainers.image.description="dr GPU worker image: PyTorch, Ray and dr-build" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
