# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit lint bench broker broker-stop lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stream-learner demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check stream_learner tests benchmarks
	$(BIN)/ruff format --check stream_learner tests benchmarks
	$(BIN)/mypy stream_learner benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[train,dev,bench]'
	$(BIN)/python -m benchmarks.run

broker:
	deploy/kafka/kafka.sh start

broker-stop:
	deploy/kafka/kafka.sh stop

# Re-pin the versions CI tests with (after changing dependencies in pyproject.toml).
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^stream-learner' > constraints.txt

clean:
	rm -rf $(VENV) build dist *.egg-info
