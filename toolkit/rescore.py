"""A finished run scored again: its saved model, reloaded from disk, on its recipe's held-out data.

The check that what was saved is what was trained (the FSDP check on a GPU relies on
it), and `recipes/evaluate.py --run`. The run's own recipe decides the data and the
scores: perplexity for a language model, the seq2seq task's BLEU/chrF or ROUGE, and
exact match and F1 for question answering.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.outputs import RECIPE_FILE


def rescore_run(run_dir: str | Path) -> dict:
    """eval_* scores of the model saved in `run_dir`, computed as its run computed them."""
    from toolkit.recipe import QA, Seq2Seq, load_recipe

    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file() or not any(run_dir.glob("*.safetensors")):
        raise ToolkitError(f"{run_dir} holds no finished toolkit run (a recipe.yaml and a saved model)")
    # Logging off: evaluating must not write into the run's TensorBoard folder.
    recipe = load_recipe(run_dir / RECIPE_FILE, ["training.report_to=[]"])
    if recipe.qa != QA():
        from toolkit.qa import rescore_qa_run

        return rescore_qa_run(recipe, run_dir)
    if recipe.seq2seq != Seq2Seq():
        return _seq2seq(recipe, run_dir)
    return _causal_lm(recipe, run_dir)


def _causal_lm(recipe, run_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.data.prepare import prepare_finetuning_data, prepare_pretraining_data
    from toolkit.modeling import resolve_pretrained
    from toolkit.training import build_trainer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if recipe.model.name_or_path:  # fine-tuned: the data as its run encoded it, with the base's identity
        base = resolve_pretrained(recipe.model, recipe.data.cache_dir)
        data = prepare_finetuning_data(dataclasses.replace(recipe, model=base), tokenizer)
    else:
        data = prepare_pretraining_data(recipe)
    model = AutoModelForCausalLM.from_pretrained(run_dir)  # an adapter folder loads onto its base
    return build_trainer(recipe, model, tokenizer, data.train, data.eval).evaluate()


def _seq2seq(recipe, run_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from toolkit.data.prepare import prepare_seq2seq_data
    from toolkit.modeling import resolve_pretrained
    from toolkit.outputs import read_json
    from toolkit.scoring import generation_metrics
    from toolkit.seq2seq import DECODER_ONLY, ENCODER_DECODER, configure_generation, metric_names
    from toolkit.training import build_seq2seq_trainer

    architecture = (read_json(run_dir, "data_stats.json") or {}).get("architecture", ENCODER_DECODER)
    base = resolve_pretrained(recipe.model, recipe.data.cache_dir)  # the data as its run encoded it
    data = prepare_seq2seq_data(dataclasses.replace(recipe, model=base), architecture)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    auto = AutoModelForCausalLM if architecture == DECODER_ONLY else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(run_dir)  # an adapter folder loads onto its base
    configure_generation(model, tokenizer, recipe.seq2seq, architecture)
    trainer = build_seq2seq_trainer(recipe, model, tokenizer, data.train, data.eval,
                                    generation_metrics(tokenizer, metric_names(recipe.seq2seq)))
    return trainer.evaluate()
