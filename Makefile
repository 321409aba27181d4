# hardgen — two entry points: `make demo` (embedded CPU demo, end to end) and `make test`.
# Both create .venv on first use and install the pinned stack (requirements.lock + requirements-dev.lock, universal
# locks with platform markers: Linux and macOS) plus hardgen itself.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.hardgen-installed

.PHONY: demo test test-all lint lock dag clean bench tiny-sd rehearse paper-smoke

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

# Your own config, shrunk (a few images, tiny models, 2 steps: config/rehearsal.yaml), through every rule to the
# report in rehearsal/ (never results/): make rehearse CONFIG="config/sd15-polyp.yaml my-site.yaml"
CONFIG ?= config/config.yaml
rehearse: $(STAMP)
	$(BIN)/hardgen rehearse $(CONFIG) --cores $(CORES)

# config/paper.yaml at its real architectures (SD1.5, ViT-L/16, PraNet, Polyp-PVT, the SegFormer MiT-B2 judge) with
# random weights, shrunk in counts and sizes only (config/paper-smoke.yaml), through every rule to the report in
# paper-smoke/ (never results/); rule base_model builds the random SD1.5 there first. paper-smoke/resources links the
# checkout's resources/ so paper.yaml's relative paths resolve. 10 to 20 minutes on 2 CPU cores (README "Paper smoke").
PAPER_SMOKE ?= paper-smoke
paper-smoke: $(STAMP)
	mkdir -p "$(PAPER_SMOKE)" && ln -sfn "$(CURDIR)/resources" "$(PAPER_SMOKE)/resources"
	$(BIN)/snakemake --snakefile "$(CURDIR)/Snakefile" --directory "$(PAPER_SMOKE)" --cores $(CORES) \
		--configfile "$(CURDIR)/config/config.yaml" "$(CURDIR)/config/paper.yaml" "$(CURDIR)/config/paper-smoke.yaml"

# The fast default: unit tests + short workflow runs (shrunk demo configs, every stage). CI runs this. Two pytest-xdist
# workers, one test file at a time each, the longest files first (tests/conftest.py; --no-loadscope-reorder keeps that
# order, which xdist would otherwise replace by the files' test counts): TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Slow checks too (tests marked `slow`: the full demo run, killed-and-resumed training, SDXL).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Generation / training / scoring throughput side by side (CPU, tiny models, a few minutes):
# results/benchmarks/{generation,training,scoring}.csv and bench.png.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# Rebuild the demo's pre-trained tiny Stable Diffusion (resources/tiny-sd-polyp) and its mask-condition adapter
# (resources/tiny-sd-polyp-mask, the demo's lora.init_weights), both shipped, with the defaults (seed 0, 2 torch
# threads): the same weights on a rerun (the model cards differ only in their measured wall time). The base trains its
# VAE and UNet (build/, not shipped), then its VAE decoder is fine-tuned with the encoder frozen (the latents, hence the
# UNet, keep their meaning; the base's short VAE run had not learned the polyp's faint tint). The adapter trains in two
# stages: 3,000 steps of the epsilon loss (build/), then 2,500 steps continued with the v-weighted loss (high noise,
# where the layout is decided, counts more). About 2 hours on 2 CPU cores (measured 2 h 06 min: base 65 min, partly
# shared with other jobs, decoder 7 min, each adapter stage 27 min; the model cards record each part). All checkpoint
# every 5 minutes (.NAME.pretrain-checkpoint/): interrupted and rerun, they resume to bit-identical weights
# (--no-resume starts over; --stop-after-minutes M splits the budget over sessions). A new base or adapter reruns the
# demo's training and generation.
BASE_STAGE := build/tiny-sd-polyp-base
ADAPTER_STAGE1 := build/tiny-sd-polyp-mask-stage1
tiny-sd: $(STAMP)
	$(BIN)/hardgen pretrain-tiny --out "$(BASE_STAGE)"
	$(BIN)/hardgen pretrain-decoder --out resources/tiny-sd-polyp --base "$(BASE_STAGE)"
	$(BIN)/hardgen pretrain-adapter --base resources/tiny-sd-polyp --out "$(ADAPTER_STAGE1)"
	$(BIN)/hardgen pretrain-adapter --base resources/tiny-sd-polyp --out resources/tiny-sd-polyp-mask \
		--init-weights "$(ADAPTER_STAGE1)/pytorch_lora_weights.safetensors" --loss-weighting v --lr 0.004 --steps 2500

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/python envs/sync_env.py --check

# Re-resolve the universal locks (uv, pinned in the dev lock) and rewrite envs/hardgen.yaml from the runtime lock.
# Existing pins are kept unless pyproject.toml asks otherwise; `make lock UPGRADE=--upgrade` moves to the newest.
UPGRADE ?=
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra workflow --universal --python-version 3.11 $(UPGRADE) \
		--custom-compile-command "make lock" -o requirements.lock
	$(BIN)/uv pip compile --group dev --universal --python-version 3.11 $(UPGRADE) -c requirements.lock \
		--custom-compile-command "make lock" -o requirements-dev.lock
	$(BIN)/python envs/sync_env.py

dag: $(STAMP)
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results logs benchmarks/runs .snakemake
