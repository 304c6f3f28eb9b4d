"""The Task interface: what a task (toolkit/tasks/<name>/) gives the recipe scripts and every command.

A recipe names its task (`task: causal_lm`); the registry in toolkit/tasks/__init__.py maps
the name to one Task object. The recipe scripts walk its stages (check, prepare_data,
build_model, build_trainer, draw, finish); `toolkit validate`, `plan`, `report`,
`generate`, `recipes/evaluate.py --run` and the model card ask it the rest. The shared
core (recipe, data, modeling, training, metrics, outputs, publish, plan) defines this
interface and never imports a task; a new task is a package that subclasses it and one
line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from toolkit.budget import PlanModel
from toolkit.data.prepare import PreparedData
from toolkit.errors import ToolkitError


class Task(ABC):
    """One task. Class attributes describe it; methods are its stages and its answers."""

    name: str = ""  # the value of `task:` in a recipe
    script: str = ""  # its recipe script, e.g. recipes/qa.py
    section: type | None = None  # the dataclass of its own recipe section, found under `name`; None: none
    metrics: dict[str, tuple[str, str]] = {}  # eval_results.json key -> (model-index metric type, name shown)
    pipeline_tag: str = ""  # the Hub's pipeline tag and model-index task type
    task_name: str = ""  # the model-index task name, e.g. "Extractive question answering"
    card_intro: str = ""  # how the card's scores were computed; empty: said from the metric names

    # -- the stages of a run, in the order the recipe scripts call them

    @abstractmethod
    def check(self, recipe) -> list[str]:
        """Every check that can be made before any expensive work; returns what was checked, for validate."""

    @abstractmethod
    def prepare_data(self, recipe, state) -> PreparedData:
        """Data and tokenizer, built once by each machine's first process (cached) and read by the others.
        `state`: accelerate's PartialState, for work that only the main process may do."""

    @abstractmethod
    def build_model(self, recipe, data: PreparedData):
        """The model to train, sized to the tokenizer (LoRA on top when the recipe asks)."""

    @abstractmethod
    def build_trainer(self, recipe, model, data: PreparedData):
        """A Trainer with the core's safety (SafeTraining, training.trainer_keywords) and the task's scores."""

    @abstractmethod
    def draw(self, data: PreparedData):
        """A function (trainer, recipe) -> [{prompt, completion, reference?}]: the samples shown before and after."""

    def finish(self, trainer, recipe) -> None:
        """Files of the task's own, written before the results (QA's predictions.json)."""

    # -- what the commands and the card ask

    @abstractmethod
    def documents(self, recipe) -> tuple[int, int]:
        """Training and held-out examples after loading and cleaning (no tokenizing): `validate --data`."""

    @abstractmethod
    def sequence_length(self, recipe) -> tuple[int, str]:
        """Tokens per training row, and the recipe key that sets it (plan, MFU)."""

    @abstractmethod
    def plan_model(self, recipe) -> PlanModel:
        """The model built on the meta device, for `toolkit plan`; downloads and converts nothing."""

    def card(self, recipe: dict, stats: dict) -> tuple[str, str, str]:
        """(pipeline tag, model-index task type, task name) of a finished run, from its recipe.yaml and data stats."""
        return self.pipeline_tag, self.pipeline_tag, self.task_name

    @abstractmethod
    def rescore(self, recipe, run_dir: Path) -> dict:
        """eval_* scores of the model saved in run_dir, computed as its run computed them."""

    def generate(self, folder: Path, recipe, prompts: list[str], settings: dict) -> list[str]:
        """What a saved model writes after each prompt (`toolkit generate`)."""
        raise ToolkitError(f"a {self.name} model does not generate text; score it with"
                           f" python recipes/evaluate.py --run {folder} --output_dir DIR")
