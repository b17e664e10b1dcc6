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

# The optional tools (onnx, matplotlib), installed only with EXTRAS=1 (as CI does), so that
# `make test EXTRAS=1` runs the export and plot tests instead of skipping them.
$(VENV)/extras: $(VENV)/installed requirements-extras.txt
	$(PY) -m pip install --quiet -r requirements-extras.txt
	touch $@

# The demo scores last.pth: best.pth is picked on target val labels (an oracle choice in UDA).
# An earlier demo run is continued (a finished one is just evaluated), never deleted.
demo: $(VENV)/installed
	@if [ -f $(DEMO)/source/last.pth ]; then \
		echo "continuing the earlier demo run in $(DEMO)/source"; \
		$(PY) train_source.py --resume $(DEMO)/source/last.pth; \
	else echo "training BiSeNet-R18 on the demo source (2-3 min on 2 CPU cores)"; \
		$(PY) train_source.py --demo --out $(DEMO)/source; fi
	$(PY) evaluate.py $(DEMO)/source/last.pth --markdown
	$(PY) evaluate.py $(DEMO)/source/last.pth --dataset gta5 --data-root data/demo/gta5 \
		--split val --size 144 256
	@echo "expected (README, seeds and machines): target mIoU about 13.5-16.5, held-out source about 30-34"

test: $(VENV)/installed $(if $(EXTRAS),$(VENV)/extras)
	$(PY) -m pytest

lint: $(VENV)/installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(VENV)/bin/ruff check .
