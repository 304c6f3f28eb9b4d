"""The Task interface: what a task (toolkit/tasks/<name>/) gives the run and every command.

A recipe names its task (`task: causal_lm`); the registry in toolkit/tasks/__init__.py maps
the name to one Task object. One walk, `toolkit.run.run_recipe`, runs its stages for every
recipe script: check, resolve_model, prepare_data, build_model, build_trainer, draw, finish.
`toolkit validate`, `plan`, `report`, `generate`, `recipes/evaluate.py --run` and the model
card ask it the rest. The shared core (recipe, data, modeling, training, metrics, outputs,
publish, plan, run) defines this interface and never imports a task; a new task is a package
that subclasses it and one line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from toolkit.budget import PlanModel
from toolkit.data.prepare import PreparedData
from toolkit.errors import ToolkitError
from toolkit.modeling import ResolvedModel, locate_model


@dataclass(frozen=True)
class Panel:
    """The middle panel of a run's training plot: the task's held-out scores against steps."""

    title: str
    curves: dict[str, str] = field(default_factory=dict)  # metric (eval_results.json key without eval_) -> label
    log_scale: bool = False


class Task(ABC):
    """One task. Class attributes describe it; methods are its stages and its answers."""

    name: str = ""  # the value of `task:` in a recipe
    script: str = ""  # its recipe script, e.g. recipes/qa.py
    section: type | None = None  # the dataclass of its own recipe section, found under `name`; None: none
    metrics: dict[str, tuple[str, str]] = {}  # eval_results.json key -> (model-index metric type, name shown)
    pipeline_tag: str = ""  # the Hub's pipeline tag and model-index task type
    task_name: str = ""  # the model-index task name, e.g. "Extractive question answering"
    card_intro: str = ""  # how the card's scores were computed; empty: said from the metric names
    arguments_class: type = TrainingArguments  # what the recipe's `training:` section is built into (once)
    panel: Panel | None = None  # the plot's panel of held-out scores; None: every metric of `metrics`

    # -- the stages of a run, in the order toolkit.run.run_recipe walks them

    def locate_model(self, recipe) -> ResolvedModel:
        """The model found and its config read, the row length checked against it: cheap, before any work
        (toolkit.modeling.locate_model); the run then makes it loadable (ResolvedModel.materialized)."""
        return locate_model(recipe.model, *self.sequence_length(recipe))

    def resolve_model(self, recipe, located: ResolvedModel, state) -> ResolvedModel:
        """The located model made loadable once the checks have passed (ResolvedModel.materialized; `state`:
        accelerate's PartialState, each machine's main process first)."""
        return located.materialized(recipe.data.cache_dir, state, *self.sequence_length(recipe))

    @abstractmethod
    def check(self, recipe, model: ResolvedModel) -> list[str]:
        """Every other check that can be made before any expensive work; returns what was checked.
        `toolkit validate` and the run both call it through toolkit.run.check_recipe."""

    def trainer_arguments(self, recipe) -> dict:
        """TrainingArguments keywords the task sets itself (e.g. predict_with_generate), from the recipe alone."""
        return {}

    @abstractmethod
    def prepare_data(self, recipe, model: ResolvedModel) -> PreparedData:
        """Data and tokenizer for `model`, built once by each machine's first process (cached) and read by the
        others; the task's own PreparedData class when later stages need more than its fields."""

    @abstractmethod
    def build_model(self, recipe, model: ResolvedModel, data: PreparedData):
        """The model to train, sized to the tokenizer (LoRA on top when the recipe asks)."""

    @abstractmethod
    def build_trainer(self, recipe, model, data: PreparedData):
        """A Trainer with the core's safety (SafeTraining, training.trainer_keywords) and the task's scores;
        the run finishes it (toolkit.run.finish_trainer: throughput, logs)."""

    @abstractmethod
    def draw(self, data: PreparedData):
        """A function (trainer, recipe) -> [{prompt, completion, reference?}]: the samples shown before and after."""

    def finish(self, trainer, recipe) -> None:  # noqa: B027 (optional: most tasks write no file of their own)
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

    def plot_panel(self) -> Panel:
        return self.panel or Panel("Held-out scores", {key: name for key, (_, name) in self.metrics.items()})

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
