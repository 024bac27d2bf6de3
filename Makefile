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

.PHONY: run test lint venv kfp-venv data lock bench clean-outputs help services secrets

help:
	@echo "make run   - install, make the sample data if data/ is absent, run 'dvc repro' (CPU demo profile)"
	@echo "make test  - install, check the code (make lint), run the whole test suite"
	@echo "make lint  - ruff, mypy and the layer contracts (import-linter)"
	@echo "make bench - run the benchmark scripts (prints measured figures)"
	@echo "make lock  - re-freeze requirements.lock from the current venv"
	@echo "make pipeline.yaml - compile the Kubeflow pipeline (docs/kubeflow.md)"
	@echo "make secrets - write docker/.env with fresh random secrets for the stack (FORCE=1 replaces it)"

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
# Whole files go to one worker, so a module's fixtures (servers, trained models) are built once.
TEST_WORKERS ?= 2
test: $(STAMP) $(KFP_STAMP) services lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The code's own checks, clean on every commit: style and errors (ruff), types (mypy), and the
# architecture as a contract (import-linter: layers, a plain ML library, a light orchestration layer).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Servers the end-to-end tests start themselves. Orthanc (a PACS with DICOMweb) is a Debian
# package, not a pip one: installed here when it is missing and we are root with apt; otherwise
# its test skips and says why.
ORTHANC := /usr/sbin/Orthanc
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
services:
	@if [ -x $(ORTHANC) ] && [ -e $(ORTHANC_DICOMWEB) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing orthanc + orthanc-dicomweb (apt) for tests/e2e/test_dicomweb_orthanc.py"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null \
		|| echo "apt-get could not install orthanc; the DICOMweb test will be skipped"; \
	else echo "orthanc not installed and not root with apt: tests/e2e/test_dicomweb_orthanc.py will be skipped"; fi

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
