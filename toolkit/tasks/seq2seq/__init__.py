"""Translation and summarization: source/target pairs, a model that writes the target, generation-based scores.

recipes/seq2seq.py runs this task. The recipe's `seq2seq:` section (section.py) names the
pairs and how to generate; data.py encodes them for an encoder-decoder or a decoder-only
model; model.py builds the model; trainer.py scores generated text with BLEU and chrF or
ROUGE, from the toolkit's offline metric modules, with the recipe's beam settings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    Seq2SeqTrainingArguments,
)

from toolkit.budget import PlanModel, new_vocabulary
from toolkit.data.prepare import check_data, split_corpus
from toolkit.errors import ToolkitError
from toolkit.modeling import (
    ResolvedModel,
    apply_lora,
    check_lora,
    load_model_config,
    local_model_config,
    locate_model,
    max_positions,
    resolve_pretrained,
)
from toolkit.outputs import read_json
from toolkit.recipe import Model, Recipe
from toolkit.scoring import generation_metrics
from toolkit.task import Task
from toolkit.tasks.seq2seq.data import Seq2SeqData, prepare_seq2seq_data
from toolkit.tasks.seq2seq.model import build_seq2seq_model, configure_generation, model_architecture, translate
from toolkit.tasks.seq2seq.section import (
    DECODER_ONLY,
    ENCODER_DECODER,
    Seq2Seq,
    check_decoder_only,
    check_generation,
    check_metrics,
    metric_names,
    metric_options,
)
from toolkit.tasks.seq2seq.trainer import build_seq2seq_trainer, samples, sequence_length, write_predictions


class Seq2SeqTask(Task):
    name = "seq2seq"
    script = "recipes/seq2seq.py"
    section = Seq2Seq
    metrics = {"bleu": ("bleu", "BLEU"), "chrf": ("chrf", "chrF"), "rouge1": ("rouge", "ROUGE-1"),
               "rouge2": ("rouge", "ROUGE-2"), "rougeL": ("rouge", "ROUGE-L"), "rougeLsum": ("rouge", "ROUGE-Lsum")}
    pipeline_tag = "translation"
    task_name = "Translation"
    arguments_class = Seq2SeqTrainingArguments

    def locate_model(self, recipe: Recipe) -> ResolvedModel:
        """The model found and its config read (rows are not checked against its positions: an encoder-decoder
        reads the source and writes the target in two stacks); a warm-started encoder-decoder is assembled
        from its parts when built."""
        if recipe.seq2seq.encoder:
            return ResolvedModel(recipe.model, None)
        return locate_model(recipe.model)

    def resolve_model(self, recipe: Recipe, located: ResolvedModel, state) -> ResolvedModel:
        return located.materialized(recipe.data.cache_dir, state)  # rows checked by neither stack's positions

    def check(self, recipe: Recipe, model: ResolvedModel) -> list[str]:
        check_data(recipe, "seq2seq")
        check_lora(recipe.lora)
        if recipe.lora.enabled and not recipe.model.name_or_path:
            raise ToolkitError("lora.enabled adapts pretrained weights, and a model built from a config or warm-started"
                               " (new cross-attention) has none to adapt; set model.name_or_path or lora.enabled=false")
        names = check_metrics(recipe.seq2seq)
        check_generation(recipe.seq2seq)
        architecture = model_architecture(recipe, model)  # the config only: nothing is converted or downloaded but it
        if architecture == DECODER_ONLY:
            check_decoder_only(recipe.seq2seq)
        article = "a" if architecture == DECODER_ONLY else "an"
        return [f"{recipe.seq2seq.task} with {article} {architecture} model", f"scored with {', '.join(names)}",
                f"{len(recipe.data.sources)} data source(s) found"]

    def trainer_arguments(self, recipe: Recipe) -> dict:
        return {"predict_with_generate": True}  # scored on generated text

    def prepare_data(self, recipe: Recipe, model: ResolvedModel) -> Seq2SeqData:
        return prepare_seq2seq_data(recipe, model.spec, model_architecture(recipe, model))

    def build_model(self, recipe: Recipe, model: ResolvedModel, data: Seq2SeqData):
        built = build_seq2seq_model(recipe, model, data.tokenizer, data.architecture, seed=recipe.seed)
        if recipe.lora.enabled:
            built = apply_lora(built, recipe.lora,
                               task_type="CAUSAL_LM" if data.architecture == DECODER_ONLY else "SEQ_2_SEQ_LM")
        return built

    def build_trainer(self, recipe: Recipe, model, data: Seq2SeqData):
        return build_seq2seq_trainer(recipe, model, data.tokenizer, data.train, data.eval,
                                     generation_metrics(data.tokenizer, metric_names(recipe.seq2seq),
                                                        metric_options(recipe.seq2seq), sources=data.sources))

    def draw(self, data: Seq2SeqData):
        return samples(data.stats)

    def finish(self, trainer, recipe: Recipe) -> None:
        write_predictions(trainer, recipe)

    def documents(self, recipe: Recipe) -> tuple[int, int]:
        train, held_out, _ = split_corpus(recipe, "seq2seq")
        return len(train), len(held_out)

    def sequence_length(self, recipe: Recipe) -> tuple[int, str]:
        return sequence_length(recipe)

    def plan_model(self, recipe: Recipe) -> PlanModel:
        spec, s2s = recipe.model, recipe.seq2seq
        if s2s.encoder:
            return _warm_started(s2s)
        config = local_model_config(spec) if spec.name_or_path else load_model_config(spec)
        source = spec.name_or_path or "from config"
        if not spec.name_or_path:
            config.vocab_size = new_vocabulary(recipe)
        with torch.device("meta"):
            decoder_only = model_architecture(recipe, ResolvedModel(spec, config)) == DECODER_ONLY
            model = (AutoModelForCausalLM if decoder_only else AutoModelForSeq2SeqLM).from_config(config)
        shape = PlanModel.from_config(model, config, source)
        if not decoder_only:  # num_hidden_layers is the encoder's; the decoder's stack is counted too
            shape.layers += getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) \
                or config.num_hidden_layers
        return shape

    def card(self, recipe: dict, stats: dict) -> tuple[str, str, str]:
        kind = recipe.get("seq2seq", {}).get("task", "translation")
        # A decoder-only model does the task by continuing a prompt: the Hub's text-generation widget runs it.
        tag = "text-generation" if stats.get("architecture") == DECODER_ONLY else kind
        return tag, kind, kind.capitalize()

    def rescore(self, recipe: Recipe, run_dir: Path) -> dict:
        architecture = (read_json(run_dir, "data_stats.json") or {}).get("architecture", ENCODER_DECODER)
        base = resolve_pretrained(recipe.model, recipe.data.cache_dir)  # the data as its run encoded it
        data = prepare_seq2seq_data(recipe, base, architecture)
        tokenizer, model = _load(run_dir, recipe, architecture)
        trainer = build_seq2seq_trainer(recipe, model, tokenizer, data.train, data.eval,
                                        generation_metrics(tokenizer, metric_names(recipe.seq2seq),
                                                           metric_options(recipe.seq2seq)))
        return trainer.evaluate()

    def generate(self, folder: Path, recipe: Recipe, prompts: list[str], settings: dict) -> list[str]:
        """The recipe's generation (beams, lengths) on each source; sampling settings do not apply."""
        architecture = (read_json(folder, "data_stats.json") or {}).get("architecture", ENCODER_DECODER)
        tokenizer, model = _load(folder, recipe, architecture)
        return translate(model, tokenizer, recipe.seq2seq, prompts)


def _load(folder: Path, recipe: Recipe, architecture: str):
    """A saved run's tokenizer and model, with the run's generation settings (an adapter folder loads onto its base)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = (AutoModelForCausalLM if architecture == DECODER_ONLY else AutoModelForSeq2SeqLM).from_pretrained(folder)
    configure_generation(model, tokenizer, recipe.seq2seq, architecture)
    return tokenizer, model


def _warm_started(s2s: Seq2Seq) -> PlanModel:
    """An EncoderDecoderModel from a pretrained encoder (and decoder, or the encoder's copy with cross-attention)."""
    encoder = local_model_config(Model(name_or_path=s2s.encoder))
    decoder = local_model_config(Model(name_or_path=s2s.decoder or s2s.encoder))
    decoder.is_decoder, decoder.add_cross_attention = True, True
    config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    with torch.device("meta"):
        model = EncoderDecoderModel(config=config)
    return PlanModel(model, f"warm-started from {s2s.encoder}", config.model_type,
                     encoder.num_hidden_layers + decoder.num_hidden_layers, encoder.hidden_size,
                     encoder.num_attention_heads, encoder.vocab_size, max_positions(encoder))
