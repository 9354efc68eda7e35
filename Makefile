# The two commands of the README: `make train` and `make test` (every test; .ci/run calls it),
# plus `make test-fast`, the fast lane: no `slow` and no `multiprocess` tests (tests/conftest.py).
# Each creates .venv (Python 3.11 + pip) with the pinned CPU stack on first use;
# a second run with .venv present only checks its stamp.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv train test test-fast clean-venv

venv: $(STAMP)

$(STAMP): requirements/cpu.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements/cpu.txt
	# torchrec's metadata asks for the CUDA fbgemm-gpu; its real deps are in requirements/cpu.txt.
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps torchrec==1.8.0
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

train: $(STAMP)
	$(BIN)/torchrec-me train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow and not multiprocess" $(ARGS)

clean-venv:
	rm -rf $(VENV)
