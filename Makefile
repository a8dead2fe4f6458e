# The two commands of the README's quick start:
#   make run    set up .venv if needed, then run every stage in order on the built-in digits data
#   make test   set up .venv (with the test extras) if needed, then run the test suite
# Python 3.11 is what the reference machines use; PYTHON=python3.12 make run picks another one.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test notebooks bench docs clean

$(VENV)/.installed-run: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

run: $(VENV)/.installed-run
	$(PY) 01_activations.py
	$(PY) 02_pgd.py
	$(PY) 03_adv_train.py --quiet
	$(PY) 04_eval.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

notebooks: $(VENV)/.installed-test
	$(PY) notebooks/build_notebooks.py

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_pgd.py
	$(PY) benchmarks/bench_train.py

# copy the figures the README shows from runs/ (after `make run` and the 3-seed study) into docs/
docs:
	mkdir -p docs
	cp runs/01_activations/figure2_activations.png runs/02_pgd/adversarial_examples.png \
	   runs/04_eval/figure3_acc_vs_robust.png runs/04_eval/robust_vs_steps.png runs/04_eval/robust_vs_eps.png docs/

clean:
	rm -rf runs
