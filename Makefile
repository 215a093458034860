# The front door. `make run` and `make test` each set up the environment first (idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctxf-installed

.PHONY: setup run experiment train generate test test-unit test-distributed test-slurm bench dry-run clean

setup: $(STAMP)

# torch is installed first and pinned (constraints.txt) so that no later package pulls another build;
# DS_BUILD_OPS=0 keeps DeepSpeed from compiling its C++/CUDA ops at install time.
$(STAMP): setup.py setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The front door: the whole recipe on the embedded default (tiny model, built-in curtain world, 2
# CPU ranks over gloo; about 4 minutes on 2 shared cores): stage 0 -> teacher ODE pairs -> ODE
# init -> context DMD, each stage from the previous one's run in outputs/train/, then a 10 s
# video from the final student in outputs/generate/. Running it again skips complete stages.
run: setup
	$(PY) -m ctxf.chain --root outputs/train --video-dir outputs/generate

# The memory experiment (about 52 minutes on 2 cores): stage-0 teacher -> ODE init -> Self-Forcing,
# LongLive, LongLive + Slow-Fast and Context Forcing students on equal budgets, then the curtain
# test of seven rows; runs in outputs/experiment/, results in outputs/experiment/experiment.{json,png}
# and experiment_colour.png.
# Running it again skips complete stages and evaluations.
experiment: setup
	$(PY) -m ctxf.eval.experiment --root outputs/experiment

train: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed --num_gpus 2 ctxf/train.py --deepspeed ds_configs/zero3.json

generate: setup
	$(VENV)/bin/ctxf-generate

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-distributed: setup
	$(PY) -m pytest -q tests/distributed

# A real slurmctld + slurmd on this machine (needs root and `apt-get install slurm-wlm munge`);
# CTXF_REQUIRE_SLURM=1 makes a missing SLURM a failure instead of a skip.
test-slurm: setup
	$(PY) -m pytest -q tests/slurm

bench: setup
	$(PY) benchmarks/bench_streaming.py
	$(PY) benchmarks/bench_peers.py
	$(PY) benchmarks/bench_rope.py
	$(PY) benchmarks/bench_parallel.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_distill.py

dry-run: setup
	$(PY) -m ctxf.train --validate-only --world-size 64 --config wan1.3b
	$(PY) -m ctxf.train --validate-only --world-size 64 --config wan14b

clean:
	rm -rf $(VENV) outputs .pytest_cache
