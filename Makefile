# hemo-pipeline: two commands for users, `make run` and `make test`; both work on a bare machine
# with Python 3.11 (they create .venv and install the pinned set first, once per venv).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hemo-installed
# The Kubeflow toolbox (kfp, kfp.local, the Kubeflow job models) in a venv of its own: kfp needs
# kubernetes<31 and protobuf<7, Airflow's Kubernetes provider kubernetes>=36 (docs/kubeflow.md).
KFP_VENV ?= .venv-kfp
KFP_STAMP := $(KFP_VENV)/.hemo-kfp-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint venv kfp-venv data lock bench clean-outputs help services secrets image containers

help:
	@echo "make run   - install, make the sample data if data/ is absent, run 'dvc repro' (CPU demo profile)"
	@echo "make test  - install, check the code (make lint), run the whole test suite"
	@echo "make lint  - ruff, mypy and the layer contracts (import-linter)"
	@echo "make bench - run the benchmark scripts (prints measured figures)"
	@echo "make lock  - re-freeze requirements.lock from the current venv"
	@echo "make pipeline.yaml - compile the Kubeflow pipeline (docs/kubeflow.md)"
	@echo "make secrets - write docker/.env with fresh random secrets for the stack (FORCE=1 replaces it)"
	@echo "make image - build the training/serving image (docker/Dockerfile) here, no registry (BASE_IMAGE=... to change the base)"

venv: $(STAMP)

# The stamp makes the install happen once per venv, and again only when the pins change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

kfp-venv: $(KFP_STAMP)

$(KFP_STAMP): pipelines/requirements-kfp.txt
	test -x $(KFP_VENV)/bin/python || $(PYTHON) -m venv $(KFP_VENV)
	$(KFP_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r pipelines/requirements-kfp.txt
	touch $(KFP_STAMP)

# The committed Kubeflow pipeline (IR YAML); tests/pipelines checks that it is current.
pipeline.yaml: pipelines/kubeflow.py pipelines/steps.py hemo_pipeline/orchestration/runners.py hemo_pipeline/services/results.py $(KFP_STAMP)
	$(KFP_VENV)/bin/python -m pipelines.kubeflow compile --out $@

data: $(STAMP)
	@if [ -d data ]; then echo "data/ exists: keeping it"; else \
		$(BIN)/hemo synth --out data && \
		$(BIN)/dvc commit --force --quiet data.dvc && \
		$(BIN)/dvc push --quiet data.dvc && echo "sample data cached and pushed to the 'demo' DVC remote"; fi

run: data
	$(BIN)/dvc repro
	@$(BIN)/hemo summary

# The suite is mostly end-to-end steps in subprocesses (imports, model export, servers): two
# workers, one thread each (tests/conftest.py), run it in about half the time on two cores.
# Whole files go to one worker, so a module's fixtures (servers, trained models) are built once;
# in collection order (tests/conftest.py puts the longest files first), not xdist's default of
# most tests first, which started the 15-minute learning test near the end.
TEST_WORKERS ?= 2
test: $(STAMP) $(KFP_STAMP) services containers lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The code's own checks, clean on every commit: style and errors (ruff), types (mypy), and the
# architecture as a contract (import-linter: layers, a plain ML library, a light orchestration layer).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Servers and tools the end-to-end tests start themselves. Orthanc (a PACS with DICOMweb) and
# dicom3tools (dciodvfy, the DICOM validator the result objects of `hemo report` must pass) are
# Debian packages, not pip ones: installed here when missing and we are root with apt; otherwise
# their tests skip and say why.
ORTHANC := /usr/sbin/Orthanc
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
DCIODVFY := /usr/bin/dciodvfy
services:
	@if [ -x $(ORTHANC) ] && [ -e $(ORTHANC_DICOMWEB) ] && [ -x $(DCIODVFY) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing orthanc + orthanc-dicomweb + dicom3tools (apt) for the DICOMweb and report tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb \
		dicom3tools >/dev/null || echo "apt-get could not install them; the DICOMweb and report tests will be skipped"; \
	else echo "orthanc or dicom3tools not installed and not root with apt: their tests will be skipped"; fi

# The training/serving image, built here from docker/Dockerfile with no image registry: the base is
# a debootstrapped Debian (scripts/debian_base.sh) unless BASE_IMAGE names another (production:
# nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04, the Dockerfile's default); pip installs exactly
# requirements.lock from a local index (scripts/wheelhouse.py). Docker's layer cache makes a build
# with unchanged inputs a few seconds, and one after a source change reuses the dependency layer.
IMAGE ?= hemo:0.1.0
BASE_IMAGE ?= hemo-base/debian:bookworm
image: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) HEMO_IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) scripts/build_image.sh

# What the container and stack tests (tests/e2e/test_containers_*.py, test_stack_*.py) need, where
# this machine allows it (root with apt): a Docker engine (scripts/docker_engine.sh), the image,
# Docker Compose v2 (scripts/compose_v2.sh: Debian's package, unpacked into a cache folder),
# and PostgreSQL's server (Debian's postgresql); its drivers are in the venv's test extra.
# Elsewhere those tests skip and say why.
containers: $(STAMP)
	@scripts/docker_engine.sh
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory image; \
	else echo "no Docker engine: tests/e2e/test_containers_*.py and test_stack_*.py will be skipped"; fi
	@scripts/compose_v2.sh >/dev/null || echo "no Docker Compose v2: tests/e2e/test_containers_compose.py will be skipped"
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing postgresql (apt) for tests/e2e/test_stack_*.py"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
		|| echo "apt-get could not install postgresql; the stack tests will be skipped"; \
	else echo "no PostgreSQL server and not root with apt: tests/e2e/test_stack_*.py will be skipped"; fi

# The quick benchmarks (minutes); benchmarks/asl_vs_bce.py is a ~30 min experiment, run it by hand.
bench: $(STAMP)
	for script in validation_speed context_scoring precision_scoring training_throughput; do \
		$(BIN)/python benchmarks/$$script.py || exit 1; done

# docker/.env for docker/compose.yaml: every secret fresh and random, mode 0600, never overwritten
# unless FORCE=1 (standard library only: no venv needed on the host that runs the stack).
secrets:
	python3 scripts/make_secrets.py $(if $(FORCE),--force)

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^hemo-pipeline' > requirements.lock

clean-outputs:
	rm -rf outputs reports
