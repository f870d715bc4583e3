"""The six-dimension video judge: a privileged simulator-grounded teacher and a
distilled student reward (see docs/design.md).

Shared vocabulary of every judge module:

- a **clip** is a dict ``{"frames": (T+1, H, W, 3) uint8`` (start frame first),
  ``"actions": (T * stride, 4) float32`` control actions, ``"stride": int`` control
  steps per frame (2 for world-model clips), ``"start_state": (S,) float64`` the
  simulator state of the first frame (``info["sim_state"]``), ``"env_id": str``,
  ``"instruction": int`` (id into :data:`envs.vocab.INSTRUCTIONS`)``}``;
- scores are in the order of :data:`DIMENSIONS`, each in ``[0, MAX_SCORES[k]]``;
  normalized scores are ``score / MAX_SCORES`` in ``[0, 1]``.
"""
from __future__ import annotations

DIMENSIONS: tuple[str, ...] = (
    "instruction_following",       # IF, 0-3
    "manipulation_success",        # MS, 0-2
    "action_outcome_consistency",  # AOC, 0-1
    "temporal_consistency",        # TC, 0-1
    "contact_realism",             # CR, 0-1
    "physics_adherence",           # PA, 0-2
)
SHORT: tuple[str, ...] = ("IF", "MS", "AOC", "TC", "CR", "PA")
MAX_SCORES: tuple[float, ...] = (3.0, 2.0, 1.0, 1.0, 1.0, 2.0)
#: Indices of the task dimensions and of the realism (faithfulness) dimensions.
TASK_DIMS: tuple[int, ...] = (0, 1)
REALISM_DIMS: tuple[int, ...] = (2, 3, 4, 5)
