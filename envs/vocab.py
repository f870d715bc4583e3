"""The one instruction vocabulary shared by every task, agent and model.

Each instruction has a spec (:class:`InstructionSpec`): its text, its verb (what success
is) and selectors over the scene that say which cube is the target and which the
reference. Env, experts, teacher and oracle ask the spec instead of parsing the text.
Observations carry the instruction as a ``Discrete`` id into :data:`INSTRUCTIONS` so
that SB3 and the world model can use it; the text is in ``info`` and here.

Adding an instruction: one :class:`InstructionSpec` in :data:`SPECS` (append: the ids of
the others stay), the tasks that may draw it in :mod:`envs.tasks`, and tests. The
vocabulary's content is part of every stage key (:data:`VOCAB_KEY`), so models and
rollouts made under another vocabulary are never reused silently.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

#: Colours the tasks know, in the order used for per-object arrays and mask labels.
COLOURS: tuple[str, ...] = ("red", "green")
#: What an instruction asks: ``lift`` -- the target's centre rises above the task's lift
#: margin and no other cube does; ``stack`` -- the target rests on the reference (robosuite
#: Stack's check, for either cube on the other: lifted, touching, not grasped).
VERBS: tuple[str, ...] = ("lift", "stack")


#: Sides a selector may name. "left" / "right" are as the camera sees the scene: the camera
#: faces the robot from the front of the table, so image-right is the world's +y axis and
#: the cube on the left is the one with the smaller y (:data:`SIDE_AXIS`).
SIDES: tuple[str, ...] = ("left", "right")
SIDE_AXIS = 1


@dataclass(frozen=True)
class Selector:
    """Picks one cube of a scene: by ``colour`` (the cube of that colour) or by ``side``
    (:data:`SIDES`: the cube further that way along :data:`SIDE_AXIS`, read from the cubes'
    ``positions`` at the episode's start -- tasks that draw a side keep the cubes at least
    ``TaskSpec.side_margin`` apart along that axis, so the answer is never close to call)."""

    colour: str | None = None
    side: str | None = None

    def __post_init__(self):
        if (self.colour is None) == (self.side is None):
            raise ValueError("a selector names a colour or a side, exactly one of them")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {COLOURS}")
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; known: {SIDES}")

    @property
    def needs_positions(self) -> bool:
        return self.side is not None

    def pick(self, positions: Mapping[str, object] | None = None) -> str:
        """The colour of the selected cube, given the cubes' ``positions`` ``(3,)`` by colour."""
        if self.colour is not None:
            return self.colour
        if not positions or len(positions) < 2:
            raise ValueError(f"selecting the cube on the {self.side} needs the positions of two cubes, "
                             f"got {None if positions is None else list(positions)}")
        ys = {c: float(p[SIDE_AXIS]) for c, p in positions.items()}
        return (min if self.side == "left" else max)(ys, key=ys.get)


@dataclass(frozen=True)
class InstructionSpec:
    """An instruction's meaning: ``verb`` (:data:`VERBS`), the ``target`` cube it moves and,
    for ``stack``, the ``reference`` cube it goes on."""

    text: str
    verb: str
    target: Selector
    reference: Selector | None = None

    def __post_init__(self):
        if self.verb not in VERBS:
            raise ValueError(f"{self.text!r}: unknown verb {self.verb!r}; known: {VERBS}")
        if (self.verb == "stack") != (self.reference is not None):
            raise ValueError(f"{self.text!r}: a reference cube is needed by 'stack' and only by it")

    def target_colour(self, positions: Mapping[str, object] | None = None) -> str:
        return self.target.pick(positions)

    def reference_colour(self, positions: Mapping[str, object] | None = None) -> str | None:
        return None if self.reference is None else self.reference.pick(positions)


#: Every instruction, in id order (append new ones: ids are stored in rollouts and models).
SPECS: tuple[InstructionSpec, ...] = (
    InstructionSpec("lift the red cube", "lift", Selector("red")),
    InstructionSpec("lift the green cube", "lift", Selector("green")),
    InstructionSpec("stack the red cube on the green cube", "stack", Selector("red"), Selector("green")),
    InstructionSpec("stack the green cube on the red cube", "stack", Selector("green"), Selector("red")),
    # Evaluation-only (no task collects them, no expert demonstrates them): the zero-shot set.
    InstructionSpec("lift the cube on the left", "lift", Selector(side="left")),
    InstructionSpec("lift the cube on the right", "lift", Selector(side="right")),
)
INSTRUCTIONS: tuple[str, ...] = tuple(s.text for s in SPECS)
if len(set(INSTRUCTIONS)) != len(INSTRUCTIONS):
    raise ValueError("two instruction specs share a text")


def vocab_key(specs: tuple[InstructionSpec, ...] = SPECS, colours: tuple[str, ...] = COLOURS) -> str:
    """A hash of a whole vocabulary: every spec, in order, and the colours."""
    blob = json.dumps({"colours": colours, "specs": [asdict(s) for s in specs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: This vocabulary's key: part of every stage key (experiments/pipeline.py).
VOCAB_KEY: str = vocab_key()


def instruction_id(text: str) -> int:
    """Id of an instruction text; raises ``KeyError`` naming the known ones."""
    try:
        return INSTRUCTIONS.index(text)
    except ValueError:
        raise KeyError(f"unknown instruction {text!r}; known: {list(INSTRUCTIONS)}") from None


def instruction_text(idx: int) -> str:
    if not 0 <= int(idx) < len(INSTRUCTIONS):
        raise KeyError(f"instruction id {idx} outside 0..{len(INSTRUCTIONS) - 1}")
    return INSTRUCTIONS[int(idx)]


def instruction_spec(text_or_id: str | int) -> InstructionSpec:
    """The spec of an instruction given by its text or id."""
    idx = instruction_id(text_or_id) if isinstance(text_or_id, str) else int(text_or_id)
    instruction_text(idx)       # a clear error for an id out of range
    return SPECS[idx]


def target_colour(text_or_id: str | int, positions: Mapping[str, object] | None = None) -> str:
    """Colour of the cube the instruction asks to move (the red one for Stack)."""
    return instruction_spec(text_or_id).target_colour(positions)


def opposite_instruction(text_or_id: str | int) -> int:
    """The id of the instruction that asks the opposite of this one, on the same scene: the
    other colour or side (lift), the other order (stack)."""
    spec = instruction_spec(text_or_id)

    def flip(sel: Selector | None) -> Selector | None:
        if sel is None:
            return None
        if sel.colour is not None:
            return Selector(colour=next(c for c in COLOURS if c != sel.colour))
        return Selector(side=next(s for s in SIDES if s != sel.side))

    want = (spec.verb, flip(spec.target), flip(spec.reference)) if spec.verb == "lift" else \
        (spec.verb, spec.reference, spec.target)
    for i, s in enumerate(SPECS):
        if (s.verb, s.target, s.reference) == want:
            return i
    raise KeyError(f"no instruction is the opposite of {spec.text!r}")


def lift_instruction(colour: str) -> int:
    """The id of the instruction that asks to lift the ``colour`` cube."""
    for i, s in enumerate(SPECS):
        if s.verb == "lift" and s.target == Selector(colour):
            return i
    raise KeyError(f"no instruction lifts the {colour} cube")
