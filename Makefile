# imitation-gap: the two commands of the README.
#   make run   - set up the venv (pinned) and reproduce the whole embedded study (dvc repro, 2 stages at a time)
#   make test  - set up the venv (pinned) and run the test suite
#   make bench - measure throughput, client, eval and pipeline costs; writes BENCHMARKS.md (< 20 min)
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: run test setup bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -c requirements.lock -e ".[test]"
	touch $@

# data.dvc (hand-made inputs) comes from the remote bundled in the repo: no network needed.
# The pipeline's independent stages run JOBS at a time (python -m imitation_gap.runner.parallel: one
# `dvc repro --single-item` per stage); `dvc repro` alone gives the same result, one stage at a time.
JOBS ?= 2
run: setup
	dvc pull data.dvc
	$(PY) -m imitation_gap.runner.parallel --jobs $(JOBS)
	@echo "Done: see REPORT.md, metrics/summary.json and plots/."

# Two workers, one test file each at a time; the longest files start first. The 15 slowest tests are listed at the end.
TEST_ORDER := tests/test_ray.py tests/test_pipeline.py tests/test_sharing.py tests/test_hub.py tests
test: setup
	dvc pull -q data.dvc
	$(PY) -m pytest -n 2 --dist loadfile --durations=15 $(TEST_ORDER)

# Every figure in BENCHMARKS.md comes from this one run (raw numbers: bench/results.json).
bench: setup
	dvc pull -q data.dvc
	PYTHONPATH=$(abspath src) $(PY) -m bench

clean-venv:
	rm -rf $(VENV)
