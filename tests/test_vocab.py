"""Instructions own their meaning: specs, selectors, tasks that draw them, and the vocabulary key."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from envs.tasks import TASKS, TaskSpec
from envs.vocab import (
    INSTRUCTIONS,
    SPECS,
    VOCAB_KEY,
    InstructionSpec,
    Selector,
    instruction_id,
    instruction_spec,
    lift_instruction,
    target_colour,
    vocab_key,
)


def test_every_spec_round_trips_by_text_and_id():
    for i, spec in enumerate(SPECS):
        assert instruction_spec(i) is spec and instruction_spec(spec.text) is spec
        assert instruction_id(spec.text) == i and INSTRUCTIONS[i] == spec.text
        assert instruction_spec(np.int64(i)) is spec            # ids come as numpy ints from arrays
    with pytest.raises(KeyError, match="known"):
        instruction_spec("lift the blue cube")
    with pytest.raises(KeyError, match="outside"):
        instruction_spec(len(SPECS))


def test_specs_say_target_reference_and_verb():
    scene = {"red": np.array([0.0, 0.05, 0.82]), "green": np.array([0.0, -0.05, 0.82])}   # green on the left
    assert [(s.verb, s.target_colour(scene), s.reference_colour(scene)) for s in SPECS] == [
        ("lift", "red", None), ("lift", "green", None), ("stack", "red", "green"), ("stack", "green", "red"),
        ("lift", "green", None), ("lift", "red", None)]
    assert target_colour("stack the red cube on the green cube") == "red"
    assert target_colour("stack the green cube on the red cube") == "green"
    assert SPECS[lift_instruction("green")].target == Selector("green")
    with pytest.raises(ValueError, match="unknown colour"):
        Selector("blue")
    with pytest.raises(ValueError, match="unknown side"):
        Selector(side="up")
    with pytest.raises(ValueError, match="exactly one"):
        Selector("red", side="left")
    with pytest.raises(ValueError, match="positions of two cubes"):
        target_colour("lift the cube on the left")        # a side cannot be read without the scene
    with pytest.raises(ValueError, match="unknown verb"):
        InstructionSpec("push the red cube", "push", Selector("red"))
    with pytest.raises(ValueError, match="reference"):
        InstructionSpec("stack the red cube", "stack", Selector("red"))
    with pytest.raises(ValueError, match="reference"):
        InstructionSpec("lift the red cube", "lift", Selector("red"), Selector("green"))


def test_tasks_draw_only_instructions_their_scene_can_carry_out():
    for task in TASKS.values():
        for text in task.instructions:
            spec = instruction_spec(text)
            assert {spec.target.colour, getattr(spec.reference, "colour", None)} - {None} <= set(task.colours)
    with pytest.raises(ValueError, match="needs cubes"):
        TaskSpec("LiftGreen", "Lift", ("lift the green cube",), max_episode_steps=10)   # Lift has one red cube
    with pytest.raises(KeyError, match="known"):
        TaskSpec("Push", "Stack", ("push the red cube",), max_episode_steps=10)
    with pytest.raises(ValueError, match="side_margin"):   # "left" must never be close to call
        TaskSpec("Side", "Stack", ("lift the cube on the left",), max_episode_steps=10)


def test_zero_shot_instructions_are_drawn_by_no_training_task():
    """The side instructions are evaluation-only: the tasks the pipeline collects never draw them."""
    from envs.vocab import SIDES

    side_ids = {i for i, s in enumerate(SPECS) if s.target.side in SIDES}
    assert side_ids and all(not side_ids & set(TASKS[t].instruction_ids) for t in ("Lift", "PickColor", "Stack"))
    assert set(TASKS["PickSide"].instruction_ids) == side_ids

def test_vocabulary_key_changes_with_any_spec_and_reaches_the_stage_keys(monkeypatch):
    import envs.vocab
    from experiments import pipeline

    assert vocab_key() == VOCAB_KEY
    renamed = (*SPECS[:2], dataclasses.replace(SPECS[2], text="put the red cube on the green cube"))
    assert vocab_key(renamed) != VOCAB_KEY
    assert vocab_key((*SPECS, InstructionSpec("lift the red cube again", "lift", Selector("red")))) != VOCAB_KEY
    # stages keyed before the vocabulary changed keep their keys only under that vocabulary
    assert ("vocab" in pipeline.collect_inputs()) == (VOCAB_KEY != pipeline.NEUTRAL_VOCAB)
    monkeypatch.setattr(envs.vocab, "VOCAB_KEY", vocab_key(renamed))
    assert pipeline.collect_inputs()["vocab"] == vocab_key(renamed)
