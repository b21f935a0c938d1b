# scene — make run (the whole system on this machine) and make test (the whole suite). `make help` lists the targets.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENE := $(BIN)/scene
STATE ?= .state
# make deploy RECONCILE=0: skip the reconcile after deploying (make run reconciles once train-all is submitted)
RECONCILE ?= 1
STAMP := $(VENV)/.installed
# the lock: every dependency make install installs, pinned (make lock writes it; the image installs its runtime part)
LOCK := requirements.lock
EXTRAS := dev docker kubernetes
.DEFAULT_GOAL := help

# make run parameters (see README): the fields of train-all's params (scene/train/params.py TrainParams) make run sets
DATA ?=
NAME ?=
# unset ones take TrainParams' defaults (backbones: scene/metadata.py DEFAULT_BACKBONES, views 2, image size 150)
BACKBONES ?=
WEIGHTS ?= imagenet
EPOCHS ?= 30
VIEWS ?=
IMAGE_SIZE ?=
PRESET ?=
# comma-separated class names (train-all's classes); unset: the six Intel classes, else the folder names
CLASSES ?=
# sent: what the command line / environment sets, and make run's quick EPOCHS=30 unless a PRESET fills epochs
RUN_KEYS = $(foreach v,BACKBONES EPOCHS VIEWS IMAGE_SIZE,$(if $(filter command line environment,$(origin $(v))),$(v))) $(if $(PRESET),,EPOCHS)
RUN_ARGS = --weights '$(WEIGHTS)' $(foreach v,BACKBONES EPOCHS VIEWS IMAGE_SIZE,$(if $(filter $(v),$(RUN_KEYS)),--$(subst _,-,$(shell echo $(v) | tr A-Z a-z)) '$($(v))')) \
	$(if $(PRESET),--preset '$(PRESET)') $(if $(CLASSES),--classes '$(CLASSES)')
# what make run prints for `scene` outside make: the stack's state folder is found by itself only when it is .state
CLI_HERE = $(if $(filter .state,$(STATE)),,SCENE_STATE_DIR=$(STATE) )$(SCENE)

export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help install lock test test-unit test-slow test-all test-docker lint run up deploy reconcile down status clean-state benchmark dataset-name

# the dataset make run uploads and trains: NAME, else the DATA folder's name (sanitised), else demo
DATASET_NAME = $(SCENE) data name $(if $(DATA),'$(DATA)') $(if $(NAME),--name '$(NAME)')

## list the targets and make run's variables
help:
	@echo "usage: make TARGET [VARIABLE=value …]"
	awk '/^## /{doc=substr($$0, 4); next} /^[a-z][a-z-]*:/{if (doc) {sub(/:.*/, ""); printf "  %-13s %s\n", $$0, doc}; doc=""; next} !/^#/{doc=""}' $(firstword $(MAKEFILE_LIST))
	echo "make run variables: DATA=folder NAME=dataset-name CLASSES=a,b,c BACKBONES=a,b EPOCHS=30 VIEWS=2"
	echo "  IMAGE_SIZE=150 PRESET=best-cpu|finetune-cpu WEIGHTS=imagenet|file; every target: STATE=.state (the stack's folder)"

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv (pinned in the lock) installs the lock ~4x faster than pip (docs/benchmarks.md#installing); pip when uv fails.
	# --compile-bytecode: uv writes no .pyc by default (pip does), and where PYTHONDONTWRITEBYTECODE is set no process
	# ever writes one, so each fresh process would compile TensorFlow, Prefect and GX from source (16.7 s against 7.5 s
	# to import them here): every worker, flow run and training child pays that (docs/benchmarks.md#installing)
	uv_pin=$$(grep -m1 '^uv==' $(LOCK))
	if $(BIN)/pip install -q "$$uv_pin" && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r $(LOCK); then
	  $(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	else
	  echo "uv could not install $(LOCK); installing with pip"
	  $(BIN)/pip install -q --upgrade pip
	  $(BIN)/pip install -q -r $(LOCK)
	  $(BIN)/pip install -q --no-deps -e .
	fi
	$(BIN)/pip check >/dev/null || { $(BIN)/pip check; echo "$(LOCK) lacks what pyproject.toml asks for: run make lock"; exit 1; }
	touch $(STAMP)

## create .venv and install the locked dependencies (requirements.lock) and scene (editable)
install: $(STAMP)

## pin pyproject.toml's dependencies and the extras make install uses in requirements.lock (uv pip compile)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/pip install -q 'uv>=0.13'
	$(BIN)/uv pip compile pyproject.toml $(addprefix --extra ,$(EXTRAS)) --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --custom-compile-command 'make lock' --output-file $(LOCK) --quiet
	echo "$(LOCK): $$(grep -c '^[a-z0-9]' $(LOCK)) pins (Python 3.11, x86_64 Linux); make install installs them"

## ruff over the repository
lint: install
	$(BIN)/ruff check .

# the test tiers (tests/conftest.py): unit tests first with no server up, then one stack per package (tests/faults,
# tests/integration, tests/events), each up only while its package runs. With pytest-xdist installed, TEST_WORKERS
# processes (default 2), stack packages first: each module whole on one worker, tests/events whole on one (one event
# stack), integration modules on both (a stack each); TEST_WORKERS=0: one process. TEST_ARGS: more pytest arguments.
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0,$(TEST_WORKERS)),$(shell $(BIN)/python -c 'import xdist' 2>/dev/null && printf '%s' '-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder'))
PYTEST = $(BIN)/python -m pytest -q -rs $(XDIST) $(TEST_ARGS)

# everything but Docker in one session (what .ci/run runs)
## ruff, then every test but the Docker ones in one pytest session (what CI runs)
test: install
	$(BIN)/ruff check .
	$(PYTEST) --durations=25 -m "not docker"

## the fast tier: no stack, no server, no training over a few seconds
test-unit: install
	$(PYTEST) --durations=10 -m "not integration and not faults and not slow and not docker"

## only the slow tests (the stacks, the fault tests, the long trainings)
test-slow: install
	$(PYTEST) --durations=25 -m "slow and not docker"

## make test, then the Docker tests
test-all: test test-docker

# the Docker tests (tests/docker, skipped by make test): installs Docker and debootstrap when missing (root on
# Debian/Ubuntu; otherwise says what to install) and starts dockerd (deployments/docker-host.sh), builds the image
# (deployments/Dockerfile, cached between runs) and runs train-all with backbones dispatched into containers
## the Docker tests: installs Docker when missing, builds the image, runs flows in containers
test-docker: install
	deployments/docker-host.sh
	$(BIN)/python -m pytest -q -rs --durations=10 -m docker tests/docker

## start the local stack (Prefect server, S3 gateway, workers of the default and gpu pools, event bridge)
up: install
	$(SCENE) stack up --state $(STATE) --pools default,gpu --workdir $(CURDIR)

## deploy the flows to the stack (train-all, train-backbone, retrain, watch, predict)
deploy: up
	stack_env=$$($(SCENE) stack env --state $(STATE)); eval "$$stack_env"  # fails here when there is no stack
	SCENE_REPO_DIR=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all > $(STATE)/deploy.log 2>&1 || { cat $(STATE)/deploy.log; exit 1; }
	echo "deployed: train-all/default, train-all/gpu, train-backbone/gpu, extract-chunk/gpu, read-chunk/gpu, retrain/default, watch/default, predict/default, predict-chunk/gpu"
	if [ "$(RECONCILE)" != 0 ]; then $(MAKE) --no-print-directory reconcile STATE=$(STATE); fi

# announce data no gated model was trained on (events lost while deploying), unless a retrain or train-all for it
# waits or runs; data whose retrains failed is backed off (reason in the report). The bridge also reconciles hourly.
## announce data no gated model was trained on yet
reconcile: up
	stack_env=$$($(SCENE) stack env --state $(STATE)); eval "$$stack_env"  # fails here when there is no stack
	$(SCENE) events reconcile > $(STATE)/reconcile.log 2>&1 || { cat $(STATE)/reconcile.log; exit 1; }

## upload DATA (or a generated demo), train every backbone, gate the best, watch it live (variables: make help)
run: up
	stack_env=$$($(SCENE) stack env --state $(STATE)); eval "$$stack_env"  # fails here when there is no stack
	start=$$(date +%s)
	name=$$($(DATASET_NAME))
	if [ -n "$(DATA)" ]; then src="$(DATA)"; else src=$(STATE)/demo-data; \
	  [ -d $$src ] || $(SCENE) data synth $$src --per-class 40 --test-per-class 10 --size 96; fi
	# upload before deploying: unchanged files are skipped; new ones are announced at once (_READY) while the
	# retrain trigger does not exist yet, so make run trains once; later uploads do start a retraining
	$(SCENE) data upload "$$src" --name "$$name" --ready --wait-bridge http://127.0.0.1:8787
	$(MAKE) --no-print-directory deploy STATE=$(STATE) RECONCILE=0  # reconciled below, once train-all is submitted
	# train-all takes its training settings as one object, params (scene.train.params.TrainParams), and the
	# class names as classes: --params '{"data": …, "params": {…}, "classes": […]}'
	params=$$($(BIN)/python deployments/run_params.py "s3://$$SCENE_DATA_BUCKET/$$SCENE_DATA_PREFIX$$name/" $(RUN_ARGS))
	$(BIN)/prefect deployment run train-all/default --params "$$params" > $(STATE)/last-run.log
	run_id=$$(grep -oE 'UUID: [0-9a-f-]{36}' $(STATE)/last-run.log | head -1 | cut -d' ' -f2)
	# now that train-all waits for this data, the reconcile leaves it alone (else a retrain would train it twice)
	$(MAKE) --no-print-directory reconcile STATE=$(STATE)
	echo "train-all run $$run_id; Prefect UI: http://127.0.0.1:4200/runs/flow-run/$$run_id"
	# one live line per backbone, then the comparison table; exits non-zero when the run did not complete
	status=0; $(SCENE) runs watch "$$run_id" | tee -a $(STATE)/last-run.log || status=$$?
	echo "make run took $$(( $$(date +%s) - start )) s after the stack was up. From this folder:"
	echo "  $(CLI_HERE) runs show $$run_id    # the comparison table and where the artifacts are"
	echo "The stack keeps running for the UI; 'make down' stops it, 'make clean-state' also deletes its data."
	exit $$status

## stop the stack (its data stays in STATE)
down:
	test -x $(SCENE) && $(SCENE) stack down --state $(STATE) || true

## stop the stack and delete its state folder (uploaded data, models, logs, credentials); keeps .venv
clean-state:
	@state="$(abspath $(STATE))"
	case "$(CURDIR)/" in "$$state"/*) echo "STATE=$(STATE) holds this repository: refusing to delete it"; exit 1;; esac
	case "$$state" in /|$(abspath $(VENV))|$(HOME)) echo "STATE=$(STATE): refusing to delete that folder"; exit 1;; esac
	if [ ! -e "$(STATE)" ]; then echo "nothing to remove: no $(STATE)"; exit 0; fi
	if [ -x $(SCENE) ]; then $(SCENE) stack down --state $(STATE) || { echo "the stack in $(STATE) did not stop; nothing removed"; exit 1; }; fi
	size=$$(du -sh "$(STATE)" | cut -f1)
	rm -rf "$(STATE)"
	echo "removed $(STATE) ($$size: the stack's uploaded data, models, runs' artifacts, logs and credentials); .venv stays"

## each service's health
status: install
	$(SCENE) stack status --state $(STATE)

## print the dataset name make run uploads to (NAME, else DATA's folder name, else demo)
dataset-name:
	@$(DATASET_NAME)

## the cached-vs-online training benchmark (docs/benchmarks.md)
benchmark: install
	$(BIN)/python benchmarks/cached_vs_online.py
