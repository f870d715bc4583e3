"""The one instruction vocabulary shared by every task, agent and model.

Observations carry the instruction as a ``Discrete`` id into :data:`INSTRUCTIONS`
so that SB3 and the world model can use it; the text is in ``info`` and here.
"""
from __future__ import annotations

INSTRUCTIONS: tuple[str, ...] = (
    "lift the red cube",
    "lift the green cube",
    "stack the red cube on the green cube",
)

#: Colours the tasks know, in the order used for per-object arrays and mask labels.
COLOURS: tuple[str, ...] = ("red", "green")


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


def target_colour(text_or_id: str | int) -> str:
    """Colour of the cube the instruction asks to move ("red" for Stack)."""
    text = instruction_text(text_or_id) if isinstance(text_or_id, int) else text_or_id
    for colour in COLOURS:
        if f"the {colour} cube" in text:
            return colour
    raise KeyError(f"instruction {text!r} names no known colour")
