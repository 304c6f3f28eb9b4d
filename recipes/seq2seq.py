"""Translation and summarization from one YAML recipe, scored with BLEU and chrF or ROUGE.

    accelerate launch recipes/seq2seq.py [--config RECIPE.yaml] [section.key=value ...]

The default recipe translates English to German (a small T5 trained from scratch on the
gettext catalogs of this machine); recipes/seq2seq/summarization.yaml summarizes
standard-library docstrings with an encoder-decoder warm-started from MiniLM.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import dataclasses  # noqa: E402

from toolkit.data.prepare import check_data, prepare_seq2seq_data  # noqa: E402
from toolkit.errors import ToolkitError, exit_on_user_error  # noqa: E402
from toolkit.modeling import apply_lora, check_lora, resolve_pretrained  # noqa: E402
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.scoring import generation_metrics  # noqa: E402
from toolkit.seq2seq import (  # noqa: E402
    DECODER_ONLY, build_seq2seq_model, check_decoder_only, check_generation, check_metrics, model_architecture,
    samples,
)
from toolkit.training import build_seq2seq_trainer  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "seq2seq" / "translation.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full; the data's columns, the model's kind and the prompt before any work.
    run = start_run(argv, DEFAULT_RECIPE)
    recipe = run.recipe
    if run.finished:
        return
    check_data(recipe, "seq2seq")
    check_lora(recipe.lora)
    if recipe.lora.enabled and not recipe.model.name_or_path:
        raise ToolkitError("lora.enabled adapts pretrained weights, and a model built from a config or warm-started"
                           " (new cross-attention) has none to adapt; set model.name_or_path or lora.enabled=false")
    metrics = check_metrics(recipe.seq2seq)
    check_generation(recipe.seq2seq)
    with run.state.main_process_first():  # a GGUF file is converted once, on the main process
        resolved = dataclasses.replace(recipe, model=resolve_pretrained(recipe.model, recipe.data.cache_dir))
    architecture = model_architecture(resolved)  # encoder-decoder, or decoder-only (prompt, then target)
    if architecture == DECODER_ONLY:
        check_decoder_only(recipe.seq2seq)

    # 2. Pairs and tokenizer: built once, by the first process; the others read its cache.
    data = prepare_seq2seq_data(resolved, architecture)

    # 3. Model: from a config, pretrained, or warm-started from a pretrained encoder; LoRA on top if asked.
    model = build_seq2seq_model(resolved, data.tokenizer, architecture, seed=recipe.training["seed"])
    if recipe.lora.enabled:
        model = apply_lora(model, recipe.lora, task_type="CAUSAL_LM" if architecture == DECODER_ONLY else "SEQ_2_SEQ_LM")

    # 4. Train, with generated text scored before and after.
    trainer = build_seq2seq_trainer(recipe, model, data.tokenizer, data.train, data.eval,
                                    generation_metrics(data.tokenizer, metrics))
    results = train_and_evaluate(trainer, recipe, run.resume_from, draw=samples(data.stats))

    # 5. Save the model, tokenizer, scores, samples, plots and card.
    finish_run(trainer, recipe, data.stats, results, run.started, draw=samples(data.stats))


if __name__ == "__main__":
    main()
