# Two commands on a fresh machine:  make app  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: app test setup setup-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned so pip takes the local CPU wheel, never the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

app: setup
	$(BIN)/streamlit run app.py --server.headless true --browser.gatherUsageStats false \
		--server.maxUploadSize 50 --server.port $(PORT)

test: setup-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
