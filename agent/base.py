"""The one interface every acting thing implements.

Agents see observations only -- never ``info`` (which holds the simulator state
and privileged poses). Observations are the env's Dict: ``image`` ``(H, W, 3)``
uint8, ``proprio`` ``(4,)``, ``instruction`` int, ``objects`` ``(3 * n_cubes,)``.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np


class Agent(ABC):
    """``reset(seed)`` at the start of each episode, then ``act(obs) -> (4,) action``."""

    name: str = "agent"

    def reset(self, seed: int | None = None) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Start a new episode; ``seed`` makes any randomness in the agent repeatable."""

    @abstractmethod
    def act(self, obs: dict) -> np.ndarray:
        """``act(obs: dict) -> np.ndarray`` of shape ``(4,)`` in [-1, 1]: ``[dx, dy, dz, grip]``."""
        raise NotImplementedError("Agent.act(obs: dict) -> np.ndarray (4,) must be implemented")


class Lazy:
    """A model given as the object itself or as a checkpoint path, loaded by ``load(path)`` on
    first :meth:`get`. One given by path is pickled without the loaded object, so agents that
    hold it travel cheaply into worker processes (``load`` must be picklable: a module-level
    function or a classmethod)."""

    def __init__(self, src, load: Callable[[Any], Any]):
        self.src, self.load = src, load
        self.obj = None if isinstance(src, (str, os.PathLike)) else src

    def get(self):
        if self.obj is None:
            self.obj = self.load(self.src)
        return self.obj

    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self.src, (str, os.PathLike)):
            state["obj"] = None
        return state


class RandomAgent(Agent):
    """Uniform random actions, held for ``repeat`` steps so the arm actually travels."""

    name = "random"

    def __init__(self, repeat: int = 4):
        self.repeat = int(repeat)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._t, self._a = 0, np.zeros(4)

    def act(self, obs: dict) -> np.ndarray:
        if self._t % self.repeat == 0:
            self._a = self._rng.uniform(-1.0, 1.0, 4)
        self._t += 1
        return self._a.copy()
