"""Entry points (thin Hydra scripts) and orchestration."""
