# The README's two commands: `make run` (main job) and `make test` (test suite).
# Each sets up .venv first (idempotent: a no-op once installed).
.PHONY: setup run test bench results

setup:
	bash setup.sh

run: setup
	.venv/bin/python experiments/closed_loop.py $(ARGS)

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q $(ARGS)

bench: setup
	.venv/bin/python -m benchmarks.foundations $(ARGS)

results: setup
	.venv/bin/python -m experiments.results $(ARGS)
