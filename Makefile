# dr -- set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo.zarr
DEMO_TEACHER := python:dr.teachers.zoo:cifar_resnet@examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16

.PHONY: venv demo test test-slow lint format clean image image-test docs

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip uninstall --quiet --yes dr 2>/dev/null || true  # v0.1's distribution name
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dr-build reinforce examples/assets/cifar10-sample --policy cifar \
		--teacher '$(DEMO_TEACHER)' --views 8 --topk 5 --chunk-size 128 \
		--out $(DEMO_OUT) --overwrite
	$(VENV)/bin/dr-build info $(DEMO_OUT)

# `make test` is the everyday suite (about 6 minutes on 2 cores); `make test-slow` runs the
# end-to-end tests marked slow (benchmark and example pipelines, Ray job control). CI runs both.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=10 -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=10 -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check dr teachers storage cli tests examples bench deploy
	$(VENV)/bin/ruff format --check dr teachers storage cli tests examples bench deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(PY) deploy/check_manifests.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The worker image (Dockerfile), built with buildah and checked with podman: no Docker daemon needed
# (docker/build-image.sh, docker/test-image.sh, docs/docker.md). Gigabytes; not part of `make test`.
image:
	docker/build-image.sh

image-test: $(STAMP)
	PYTHON=$(PY) docker/test-image.sh

format: $(STAMP)
	$(VENV)/bin/ruff check --fix dr teachers storage cli tests examples bench deploy
	$(VENV)/bin/ruff format dr teachers storage cli tests examples bench deploy

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache .mypy_cache *.egg-info
