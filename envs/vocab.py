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
#: Stack's check, which knows the red cube on the green one only).
VERBS: tuple[str, ...] = ("lift", "stack")


@dataclass(frozen=True)
class Selector:
    """Picks one cube of a scene. ``colour``: the cube of that colour (the only selector so
    far; selectors over the scene state, e.g. a side or a size, read ``positions``)."""

    colour: str

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {COLOURS}")

    def pick(self, positions: Mapping[str, object] | None = None) -> str:
        """The colour of the selected cube, given the cubes' ``positions`` by colour (unused here)."""
        return self.colour


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


def lift_instruction(colour: str) -> int:
    """The id of the instruction that asks to lift the ``colour`` cube."""
    for i, s in enumerate(SPECS):
        if s.verb == "lift" and s.target == Selector(colour):
            return i
    raise KeyError(f"no instruction lifts the {colour} cube")
