# scene — make run (the whole system on this machine) and make test (the whole suite).
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
# sent: what the command line / environment sets, and make run's quick EPOCHS=30 unless a PRESET fills epochs
RUN_KEYS = $(foreach v,BACKBONES EPOCHS VIEWS IMAGE_SIZE,$(if $(filter command line environment,$(origin $(v))),$(v))) $(if $(PRESET),,EPOCHS)

export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install test test-unit test-slow test-all test-docker lint run up deploy reconcile down status clean-state benchmark dataset-name

# the dataset make run uploads and trains: NAME, else the DATA folder's name (sanitised), else demo
DATASET_NAME = $(SCENE) data name $(if $(DATA),--src '$(DATA)') $(if $(NAME),--name '$(NAME)')

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,docker,kubernetes]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

# the test tiers (tests/conftest.py): unit tests first with no server up, then one stack per package (tests/faults,
# tests/integration, tests/events), each up only while its package runs. TEST_ARGS: more pytest arguments.
PYTEST = $(BIN)/python -m pytest -q -rs $(TEST_ARGS)

# everything but Docker in one session (what .ci/run runs)
test: install
	$(BIN)/ruff check .
	$(PYTEST) --durations=25 -m "not docker"

# the fast tier: no stack, no server, no training over a few seconds
test-unit: install
	$(PYTEST) --durations=10 -m "not integration and not faults and not slow and not docker"

# only the slow tests (the stacks, the fault tests, the long trainings)
test-slow: install
	$(PYTEST) --durations=25 -m "slow and not docker"

# make test, then the Docker tests
test-all: test test-docker

# the Docker tests (tests/docker, skipped by make test): installs Docker and debootstrap when missing (root on
# Debian/Ubuntu; otherwise says what to install) and starts dockerd (deployments/docker-host.sh), builds the image
# (deployments/Dockerfile, cached between runs) and runs train-all with backbones dispatched into containers
test-docker: install
	deployments/docker-host.sh
	$(BIN)/python -m pytest -q -rs --durations=10 -m docker tests/docker

up: install
	$(SCENE) stack up --state $(STATE) --pool default --pool gpu --workdir $(CURDIR)

deploy: up
	eval "$$($(SCENE) stack env --state $(STATE))"
	SCENE_REPO_DIR=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all > $(STATE)/deploy.log 2>&1 || { cat $(STATE)/deploy.log; exit 1; }
	echo "deployed: train-all/default, train-all/gpu, train-backbone/gpu, retrain/default, watch/default, predict/default"
	if [ "$(RECONCILE)" != 0 ]; then $(MAKE) --no-print-directory reconcile STATE=$(STATE); fi

# announce data no gated model was trained on (events lost while deploying), unless a retrain or train-all for it
# waits or runs; data whose retrains failed is backed off (reason in the report). The bridge also reconciles hourly.
reconcile: up
	eval "$$($(SCENE) stack env --state $(STATE))"
	$(SCENE) events reconcile > $(STATE)/reconcile.log 2>&1 || { cat $(STATE)/reconcile.log; exit 1; }

run: up
	eval "$$($(SCENE) stack env --state $(STATE))"
	start=$$(date +%s)
	name=$$($(DATASET_NAME))
	if [ -n "$(DATA)" ]; then src="$(DATA)"; else src=$(STATE)/demo-data; \
	  [ -d $$src ] || $(SCENE) data synth --out $$src --per-class 40 --test-per-class 10 --size 96; fi
	# upload before deploying: unchanged files are skipped; new ones are announced at once (_READY) while the
	# retrain trigger does not exist yet, so make run trains once; later uploads do start a retraining
	$(SCENE) data upload --src "$$src" --name "$$name" --ready --wait-bridge http://127.0.0.1:8787
	$(MAKE) --no-print-directory deploy STATE=$(STATE) RECONCILE=0  # reconciled below, once train-all is submitted
	# train-all takes its training settings as one object, params (scene.train.params.TrainParams): --params '{"data": …, "params": {…}}'
	params=$$($(BIN)/python -c 'import json,sys; b,w,e,v,s,p,keys=sys.argv[1:]; t={"weights": w}; t.update({k: f(x) for n, k, f, x in (("BACKBONES", "backbones", str.split, b), ("EPOCHS", "epochs", int, e), ("VIEWS", "views", int, v), ("IMAGE_SIZE", "image_size", int, s)) if n in keys.split()}); t.update({"preset": p} if p else {}); print(json.dumps({"data": "s3://'"$$SCENE_DATA_BUCKET/$$SCENE_DATA_PREFIX$$name"'/", "params": t}))' "$(BACKBONES)" "$(WEIGHTS)" "$(EPOCHS)" "$(VIEWS)" "$(IMAGE_SIZE)" "$(PRESET)" "$(RUN_KEYS)")
	$(BIN)/prefect deployment run train-all/default --params "$$params" > $(STATE)/last-run.log
	run_id=$$(grep -oE 'UUID: [0-9a-f-]{36}' $(STATE)/last-run.log | head -1 | cut -d' ' -f2)
	# now that train-all waits for this data, the reconcile leaves it alone (else a retrain would train it twice)
	$(MAKE) --no-print-directory reconcile STATE=$(STATE)
	echo "train-all run $$run_id; Prefect UI: http://127.0.0.1:4200/runs/flow-run/$$run_id"
	# one live line per backbone, then the comparison table; exits non-zero when the run did not complete
	status=0; $(SCENE) runs watch "$$run_id" | tee -a $(STATE)/last-run.log || status=$$?
	echo "make run took $$(( $$(date +%s) - start )) s after the stack was up; artifacts: $(SCENE) runs show $$run_id"
	echo "The stack keeps running for the UI; 'make down' stops it."
	exit $$status

down:
	test -x $(SCENE) && $(SCENE) stack down --state $(STATE) || true

status: install
	$(SCENE) stack status --state $(STATE)

dataset-name:
	@$(DATASET_NAME)

benchmark: install
	$(BIN)/python benchmarks/cached_vs_online.py
