# Two entry points: `make demo` (set up, train on the synthetic source, evaluate on the
# synthetic target) and `make test`. Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := runs/demo

.PHONY: demo test lint clean-demo

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/installed
	rm -rf $(DEMO)/source
	$(PY) train_source.py --demo --out $(DEMO)/source
	$(PY) evaluate.py $(DEMO)/source/best.pth --markdown
	$(PY) evaluate.py $(DEMO)/source/best.pth --dataset gta5 --data-root data/demo/gta5 \
		--split val --size 144 256

test: $(VENV)/installed
	$(PY) -m pytest

lint: $(VENV)/installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(VENV)/bin/ruff check .
