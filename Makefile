# The two commands of the README's quick start:
#   make run    set up .venv if needed, then run every stage in order on the built-in digits data
#   make test   set up .venv (with the test extras) if needed, then run the test suite
# Python 3.11 is what the reference machines use; PYTHON=python3.12 make run picks another one.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test notebooks bench docs clean lock

# The packages are installed by uv (pip installs uv itself, at a fixed version, into the venv first): torch's Linux
# wheel pulls about 5 GB of CUDA libraries even on a CPU-only machine, and uv unpacks and byte-compiles them on every
# core, in half pip's time (a fresh .venv here, uv's cache empty: 38 s against 68 s). uv reads its own settings, not
# pip's: where pip needs an index of its own (a pip.conf), replace each `$(UV) ...` line by `$(PY) -m pip install -q
# ...`, same arguments. What is installed: the exact versions of requirements.lock (make run: what the stages need)
# and requirements-test.lock (make test, make notebooks: pytest, the notebook tools, JupyterLab), the set the tests
# passed with; requirements*.txt state the ranges they come from (README, "Installing").
UV_VERSION := 0.13.9
UV     := $(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode

$(VENV)/.installed-run: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(UV) -r requirements.lock
	$(UV) --no-deps torchattacks==3.5.1
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run requirements-test.lock
	$(UV) -r requirements-test.lock
	touch $@

# make lock: both lock files anew from the ranges in requirements*.txt, the newest versions in them, for every
# platform and Python 3.11 on (--universal: macOS gets no CUDA libraries); the test set keeps the run set's versions
# (-c). Commit them once `make test` has passed with them. (The committed ones: the same two commands without
# --upgrade, each output file first holding `uv pip freeze` of the venv the suite had passed with, so that uv kept
# those versions wherever it could.)
LOCK   := $(VENV)/bin/uv pip compile -q --universal --python-version 3.11 --upgrade --custom-compile-command "make lock"
lock: $(VENV)/.installed-run
	$(LOCK) requirements.txt -o requirements.lock
	$(LOCK) requirements-test.txt -c requirements.lock -o requirements-test.lock

# make run again after an interruption (Ctrl-C, a closed laptop) continues it: stage 03 resumes each run from its
# last checkpoint and skips the finished ones (--resume), stage 04 takes what its cache holds; 01 and 02 take seconds
run: $(VENV)/.installed-run
	$(PY) 01_activations.py
	$(PY) 02_pgd.py
	$(PY) 03_adv_train.py --quiet --resume
	$(PY) 04_eval.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

# make notebooks rebuilds the notebooks from their sources notebooks/NN_name.py (jupytext percent scripts) in three
# steps, each a library's own command line; `make notebooks NB=5` does it for notebook 5 only.
#  1. jupytext: each .ipynb takes its cells from its .py; --update keeps its cell ids and the outputs of cells
#     until step 2 replaces them. (jupytext's own --execute is not used: with --update it keeps the OLD outputs,
#     and it stores per-cell timestamps.)
#  2. nbconvert (nbclient inside) runs each full edition top to bottom in notebooks/ and stores its outputs. The
#     kernel is "python3", which jupyter_client starts with this interpreter ($(PY)): the venv's own kernelspec
#     (put there by ipykernel) says "python", which jupyter_client replaces by the running interpreter, and
#     JUPYTER_PREFER_ENV_PATH=1 makes that kernelspec win over a user's own ~/.local one for another Python.
#     A failing cell stops make; that notebook then holds the new cells with the old outputs: fix it, run again.
#  3. nbconvert writes the student editions to notebooks/student/: the full edition without the cells tagged
#     "solution" (TagRemovePreprocessor) and without outputs (ClearOutputPreprocessor), to be run by the student.
NB ?=
NOTEBOOK_SRC = $(wildcard notebooks/0$(NB)*_*.py)
notebooks: $(VENV)/.installed-test
	@test -n "$(NOTEBOOK_SRC)" || { echo "no notebook matches NB=$(NB) (notebooks/0$(NB)*_*.py); use e.g. NB=5"; exit 1; }
	$(PY) -m jupytext --to ipynb --update $(NOTEBOOK_SRC)
	JUPYTER_PREFER_ENV_PATH=1 $(PY) -m nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.record_timing=False $(NOTEBOOK_SRC:.py=.ipynb)
	$(PY) -m nbconvert --to notebook --output-dir notebooks/student --ClearOutputPreprocessor.enabled=True \
	    --TagRemovePreprocessor.enabled=True --TagRemovePreprocessor.remove_cell_tags=solution $(NOTEBOOK_SRC:.py=.ipynb)

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
