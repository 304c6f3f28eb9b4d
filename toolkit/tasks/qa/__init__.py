"""Extractive question answering: SQuAD-format examples, windows over long contexts, spans back to text.

recipes/qa.py runs this task. An example is a context, a question and its answers
(`{"text": [...], "answer_start": [...]}`, character offsets into the context; empty lists
mean unanswerable, SQuAD 2.0). section.py holds the `qa:` section and its checks,
corpus.py a built-in corpus, examples.py loading and checking, windows.py the windows
and span labels, spans.py the answers and EM/F1, model.py the model and its Trainer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering

from toolkit.budget import PlanModel, new_vocabulary
from toolkit.errors import ToolkitError
from toolkit.modeling import ResolvedModel, check_block_size, load_model_config, local_model_config, locate_pretrained
from toolkit.recipe import Recipe
from toolkit.task import Task
from toolkit.tasks.qa.examples import load_qa_examples
from toolkit.tasks.qa.model import answers, build_qa_model, build_qa_trainer, check_qa_model, load_qa_tokenizer, write_predictions
from toolkit.tasks.qa.section import QA, check_qa_recipe
from toolkit.tasks.qa.windows import QAData, prepare_qa_data


class QATask(Task):
    name = "qa"
    script = "recipes/qa.py"
    section = QA
    metrics = {"exact_match": ("exact_match", "exact match"), "f1": ("f1", "F1")}
    pipeline_tag = "question-answering"
    task_name = "Extractive question answering"

    def locate_model(self, recipe: Recipe) -> ResolvedModel:
        """As every task locates its model, and a Hub model's config read now too: the span head is checked
        before any work."""
        model = super().locate_model(recipe)
        if model.config is not None:
            return model
        config = load_model_config(model.spec)
        check_block_size(config, recipe.qa.max_length, "qa.max_length")
        return ResolvedModel(model.spec, config)

    def check(self, recipe: Recipe, model: ResolvedModel) -> list[str]:
        check_qa_recipe(recipe)
        check_qa_model(model.config)
        if not (recipe.tokenizer.name_or_path or recipe.model.name_or_path):
            raise ToolkitError("a span model reads a pretrained tokenizer: set tokenizer.name_or_path"
                               " (or model.name_or_path)")
        return [f"{model.config.model_type} encoder with a span head, windows of {recipe.qa.max_length} tokens",
                f"{len(recipe.data.sources)} data source(s) found"]

    def prepare_data(self, recipe: Recipe, model: ResolvedModel) -> QAData:
        name = recipe.tokenizer.name_or_path or model.path
        return prepare_qa_data(recipe, load_qa_tokenizer(locate_pretrained(name), recipe.tokenizer.revision))

    def build_model(self, recipe: Recipe, model: ResolvedModel, data: QAData):
        return build_qa_model(model.spec, model.config, data.tokenizer, seed=recipe.seed)

    def build_trainer(self, recipe: Recipe, model, data: QAData):
        return build_qa_trainer(recipe, model, data.tokenizer, data)

    def draw(self, data: QAData):
        return answers

    def finish(self, trainer, recipe: Recipe) -> None:
        write_predictions(trainer, recipe)

    def documents(self, recipe: Recipe) -> tuple[int, int]:
        train, held_out, _ = load_qa_examples(recipe)
        return len(train), len(held_out)

    def sequence_length(self, recipe: Recipe) -> tuple[int, str]:
        return recipe.qa.max_length, "qa.max_length"

    def plan_model(self, recipe: Recipe) -> PlanModel:
        spec = recipe.model
        if spec.name_or_path:
            config, source = local_model_config(spec), spec.name_or_path
        else:
            config, source = load_model_config(spec), "from config"
            config.vocab_size = new_vocabulary(recipe)
        check_qa_model(config)
        with torch.device("meta"):
            model = AutoModelForQuestionAnswering.from_config(config)
        return PlanModel.from_config(model, config, source)

    def rescore(self, recipe: Recipe, run_dir: Path) -> dict:
        tokenizer = load_qa_tokenizer(str(run_dir))
        data = prepare_qa_data(recipe, tokenizer)
        model = AutoModelForQuestionAnswering.from_pretrained(run_dir)
        return build_qa_trainer(recipe, model, tokenizer, data).evaluate()

