# cbmir: the two commands a new user needs are `make report` (the whole default report) and `make test`.
# Both create the virtual environment first; nothing here downloads model weights or datasets.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/radmini.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: help venv system-data browser radmini report test test-fast lint bench lab clean

help:
	@echo "make report   set up, build RadMini, run the whole report (reports/, figures/)"
	@echo "make test     set up, lint and run the test suite"
	@echo "make test-fast  lint and the tests not marked slow (a few minutes; for development)"
	@echo "make radmini  build the RadMini images and manifest only"
	@echo "make bench    run every benchmark (slow, ~1 h; appends to benchmarks/RESULTS.md)"
	@echo "make lab      open JupyterLab with the project's kernel"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-lock.txt requirements-assets.txt requirements-ray.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	#: Python writes the bytecode of each module at its first import instead (only the modules used),
	# which saves about 1.5 minutes of set-up on a 2-core machine
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c requirements-lock.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	$(PY) -m pip install -q -r requirements-ray.txt -c requirements-lock.txt
	$(PY) -m pip install -q --no-deps -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name cbmir --display-name "cbmir (.venv)" >/dev/null
	touch $@

# Optional Debian packages with more radiology images (RadMini extras). Best effort: skipped where apt-get
# is unavailable or not permitted; RadMini then builds from the PyPI sources alone and says so.
# The brain MR test data of python3-dipy is not installed (that would pull ~40 system packages): the RadMini
# builder fetches the pinned .deb with `apt-get download`, which needs the package lists, so they are
# refreshed here when apt does not know python3-dipy yet.
system-data:
	-@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  for p in mricron-data invesalius-examples insighttoolkit5-examples; do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  apt-cache show python3-dipy >/dev/null 2>&1 || apt-get update -qq; \
	  if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "system-data: apt-get not usable here; RadMini will skip the Debian extras"; fi

# Headless Chromium for the report website's check (cbmir.site_check) and its screenshot. Best effort, as
# above: without it the runner builds the site unchecked and the browser tests skip, saying why.
browser:
	-@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else echo "browser: apt-get not usable here; the site is built but not checked in Chromium"; fi

radmini: venv system-data
	$(VENV)/bin/cbmir radmini build --out data/radmini --manifest data_splits/radmini.csv

report: radmini browser
	$(VENV)/bin/cbmir report --config $(CONFIG)

lint: venv
	$(VENV)/bin/ruff check lib tests benchmarks
	$(VENV)/bin/ruff format --check lib tests benchmarks

test: lint browser
	$(VENV)/bin/pytest -q

# The development lane: everything but the tests marked @pytest.mark.slow (end-to-end runs, RadMini builds,
# full-size model layouts).
test-fast: lint
	$(VENV)/bin/pytest -q -m "not slow"

bench: venv
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf work/ .pytest_cache .ruff_cache
