# The README's two commands: `make run` (main job) and `make test` (test suite).
# Each sets up .venv first (idempotent: a no-op once installed).
.PHONY: setup run test bench

setup:
	bash setup.sh

run: setup
	.venv/bin/python experiments/closed_loop.py $(ARGS)

test: setup
	.venv/bin/python -m pytest -q $(ARGS)

bench: setup
	.venv/bin/python benchmarks/foundations.py $(ARGS)
