"""Task specifications: which robosuite scene, how objects are placed, what success is.

Placement (all tasks): each cube's centre is drawn uniformly in a square of
half-width ``placement_half_range`` around the table centre (robosuite's Lift uses
+-3 cm; ours is +-8 cm), with a random yaw; in two-cube scenes the cubes are
redrawn until their centres are >= ``min_separation`` (10 cm) apart.

Success is robosuite's own criterion evaluated at every step:
- lifted: the cube's centre is more than 4 cm above the table top (Lift's check,
  and Stack's ``r_lift``);
- stacked: robosuite Stack's check (red lifted, touching green, not grasped).
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

    def __post_init__(self):
        for text in self.instructions:
            spec = instruction_spec(text)      # a KeyError names the known instructions
            colours = {spec.target_colour(), spec.reference_colour()} - {None}
            if not colours <= set(self.colours):
                raise ValueError(f"task {self.name}: {text!r} needs cubes {sorted(colours)}, the scene has "
                                 f"{list(self.colours)}")
            if spec.verb == "stack" and (self.robosuite_env != "Stack" or (spec.target_colour(),
                                                                          spec.reference_colour()) != ("red", "green")):
                raise ValueError(f"task {self.name}: {text!r}: success of 'stack' is robosuite Stack's check, "
                                 f"which knows the red cube on the green one only")

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
    "Stack": TaskSpec("Stack", "Stack", ("stack the red cube on the green cube",), max_episode_steps=200),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]
