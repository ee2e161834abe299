# Two commands on a fresh machine: `make repro` (the pipeline on the offline demo) and `make test`.
# Both create .venv (reusing packages already installed system-wide) and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# dvc stages call `papermill` by name: use the one in .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
# papermill runs notebooks in the "python3" kernel: make it the one inside .venv
export JUPYTER_PREFER_ENV_PATH := 1
# plain tqdm bars print one line per update under papermill: keep them sparse
export TQDM_MININTERVAL ?= 5
# sam2 (the masks extra) ships as an sdist whose setup.py compiles an optional CUDA extension (connected components
# for hole filling, which the mask generator runs only with min_mask_region_area > 0; CorrCLIP's setting is 0). Skip
# it: no nvcc attempt on a CPU machine (which fails and goes on anyway), and where a toolkit exists no extension built
# against the build environment's own torch, which may not be the torch installed beside it
export SAM2_BUILD_CUDA ?= 0
# pydensecrf2 (the masks extra: Panoptic Cut's dense CRF) ships as an sdist too: pip compiles its C++ and Cython
# (about 3 minutes on 2 cores) and needs a C++ compiler (Debian: apt-get install g++)

.PHONY: install repro paper mess test test-fast lab course course-install course-html demo clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (lposs)"
	touch $(STAMP)

repro: install
	$(PY) -m lposs.demo --out data/demo  # deterministic: the same bytes data.dvc pins
	$(PY) -m dvc commit -f -q data.dvc   # cache the regenerated set (data.dvc is unchanged: same bytes)
	$(PY) -m dvc repro
	@echo "results: results/table.md, results/metrics.json, plots/, executed/ (open the executed notebooks)"
	@$(PY) -m lposs.experiment.dvc_views  # dvc plots show/diff offline; says what to commit as the baseline

# make paper HEAD=sclip PROTOCOL=sclip: any dense head under its own release's protocol or LPOSS's (VM=dino_vitb8 ...)
HEAD ?= maskclip
PROTOCOL ?= lposs
paper: install
	$(PY) -m lposs paper --head $(HEAD) --protocol $(PROTOCOL) $(if $(VM),--vm $(VM))

# MESS's 22 datasets (25 runs) as one DVC experiment; results/table.md gets MESS's tables beside its leaderboard
mess: install
	$(PY) -m lposs mess --head $(HEAD) --protocol $(PROTOCOL) $(if $(VM),--vm $(VM))

test: install
	$(PY) -m pytest -ra

test-fast: install
	$(PY) -m pytest -ra -m "not slow"

# The course lab: its own venv with the package and the `course` extra only (matplotlib, scikit-learn, ipywidgets,
# JupyterLab, nbconvert; torch already on the machine is reused), then JupyterLab on the course notebook.
COURSE_VENV ?= .venv-course
COURSE_STAMP := $(COURSE_VENV)/.installed
COURSE_NOTEBOOK := notebooks/teach_label_propagation.ipynb
COURSE_HTML := executed/course/teach_label_propagation.html

course-install: $(COURSE_STAMP)

$(COURSE_STAMP): pyproject.toml
	test -x $(COURSE_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(COURSE_VENV)
	$(COURSE_VENV)/bin/python -m pip install --upgrade pip
	$(COURSE_VENV)/bin/python -m pip install -e ".[course]"
	$(COURSE_VENV)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (lposs course)"
	touch $(COURSE_STAMP)

course: course-install
	PATH="$(abspath $(COURSE_VENV))/bin:$$PATH" $(COURSE_VENV)/bin/jupyter lab $(COURSE_NOTEBOOK)

lab: course

# An executed copy for a lecturer to read without running it (full mode, static figures: no widget front end)
course-html: course-install
	mkdir -p $(dir $(COURSE_HTML))
	env -u JPY_SESSION_NAME -u VSCODE_PID PATH="$(abspath $(COURSE_VENV))/bin:$$PATH" MPLBACKEND=module://matplotlib_inline.backend_inline \
	    $(COURSE_VENV)/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=-1 \
	    --ExecutePreprocessor.kernel_name=python3 $(COURSE_NOTEBOOK) \
	    --output-dir $(dir $(COURSE_HTML)) --output $(notdir $(basename $(COURSE_HTML))).partial
	mv $(dir $(COURSE_HTML))$(notdir $(basename $(COURSE_HTML))).partial.html $(COURSE_HTML)
	@echo "executed copy: $(COURSE_HTML)"

# the web app on http://127.0.0.1:7860 (real weights, downloaded on first use); DEMO_ARGS=--demo-backbones: offline
demo: install
	$(PY) -m lposs demo $(DEMO_ARGS)
