"""Task specifications: which robosuite scene, how objects are placed, what success is.

Placement (all tasks): each cube's centre is drawn uniformly in a square of
half-width ``placement_half_range`` around the table centre (robosuite's Lift uses
+-3 cm; ours is +-8 cm), with a random yaw; in two-cube scenes the cubes are
redrawn until their centres are >= ``min_separation`` (10 cm) apart.

Success is robosuite's own criterion evaluated at every step:
- lifted: the cube's centre is more than 4 cm above the table top (Lift's check,
  and Stack's ``r_lift``);
- stacked: robosuite Stack's check for the instructed top cube on the instructed bottom
  cube (top lifted, touching the bottom, not grasped); the other stack is ``wrong_order``.

Instructions that select a cube by side ("the cube on the left") are drawn only by tasks
with a ``side_margin``: their cubes are redrawn until they are that far apart along the
side axis (:data:`envs.vocab.SIDE_AXIS`), so "left" is never close to call.
"""
from __future__ import annotations

from dataclasses import dataclass

from envs.vocab import instruction_id, instruction_spec


@dataclass(frozen=True)
class TaskSpec:
    """A scene (``robosuite_env``, placement) plus the instructions it may draw."""

    name: str
    robosuite_env: str           # "Lift" or "Stack"
    instructions: tuple[str, ...]  # drawn uniformly at reset unless options fix one
    max_episode_steps: int
    randomize_colours: bool = False  # PickColor: which cube (small/large) is red
    placement_half_range: float = 0.08
    min_separation: float = 0.10  # open fingers span ~8 cm: closer cubes get in the way
    lift_margin: float = 0.04    # robosuite: centre > table top + 0.04
    side_margin: float = 0.0     # cubes at least this far apart along the side axis (side instructions)

    def __post_init__(self):
        for text in self.instructions:
            spec = instruction_spec(text)      # a KeyError names the known instructions
            selectors = [s for s in (spec.target, spec.reference) if s is not None]
            colours = {s.colour for s in selectors} - {None}
            if not colours <= set(self.colours):
                raise ValueError(f"task {self.name}: {text!r} needs cubes {sorted(colours)}, the scene has "
                                 f"{list(self.colours)}")
            if any(s.needs_positions for s in selectors) and (len(self.colours) < 2 or self.side_margin <= 0):
                raise ValueError(f"task {self.name}: {text!r} selects a cube by side: it needs two cubes and "
                                 f"a side_margin > 0 (so that no placement is too close to call)")

    @property
    def instruction_ids(self) -> tuple[int, ...]:
        return tuple(instruction_id(t) for t in self.instructions)

    @property
    def colours(self) -> tuple[str, ...]:
        return ("red",) if self.robosuite_env == "Lift" else ("red", "green")


TASKS: dict[str, TaskSpec] = {
    "Lift": TaskSpec("Lift", "Lift", ("lift the red cube",), max_episode_steps=100),
    "PickColor": TaskSpec(
        "PickColor", "Stack", ("lift the red cube", "lift the green cube"),
        max_episode_steps=100, randomize_colours=True,
    ),
    # Both orders, and which colour goes to which cube size drawn independently of the
    # order (otherwise "small on large" would solve it without reading the instruction).
    "Stack": TaskSpec("Stack", "Stack", ("stack the red cube on the green cube", "stack the green cube on the red cube"),
                      max_episode_steps=200, randomize_colours=True),
    # Evaluation only: PickColor's scenes, the cube named by its side (zero-shot instructions).
    "PickSide": TaskSpec(
        "PickSide", "Stack", ("lift the cube on the left", "lift the cube on the right"),
        max_episode_steps=100, randomize_colours=True, side_margin=0.04,
    ),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]
