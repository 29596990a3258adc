# A local stand-in for the Dockerfile's default base (pytorch/pytorch) where that cannot be pulled:
# Debian 12 from debootstrap (docker/build-base.sh writes rootfs.tar into the build context), its
# Python 3.11 in a virtual environment at /opt/venv, first on PATH as conda's is in pytorch/pytorch,
# and torch + torchvision from the package index (CUDA builds: they run on a GPU and on the CPU).
# NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES as pytorch/pytorch sets them, for the NVIDIA
# container toolkit: which GPUs to expose (all, unless --gpus says otherwise) and which of the
# driver's parts to mount (compute: CUDA; utility: nvidia-smi).
FROM scratch
ADD rootfs.tar /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
ARG TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
# pip's settings for the build host's package index come as build secrets (docker/build-image.sh):
# mounted for this RUN step only, never stored in a layer; without them pip uses its defaults.
# DL3013: TORCH_PINS pins both versions.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca.crt,target=/etc/pip-build-ca.crt \
    python3 -m venv /opt/venv \
    && pip install --no-cache-dir ${TORCH_PINS} \
    && python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
CMD ["python3"]
