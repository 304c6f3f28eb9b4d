"""The data stages together: explicit evaluation sources, decontamination, the cache, embeddings."""

import json

import pytest

from tests.conftest import ROOT
from toolkit.data.prepare import cache_path
from toolkit.recipe import load_recipe
from toolkit.tasks.causal_lm.data import prepare_pretraining_data


def cache_key(recipe, kind: str):
    """The cache folder of a recipe whose model is used as it is named (nothing converted)."""
    return cache_path(recipe, kind, recipe.model)


DEFAULT = ROOT / "recipes" / "pretrain" / "default.yaml"


def write_jsonl(path, texts):
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    words = "parser lexer token grammar syntax module import class function value".split()
    train = [" ".join(words[(i + j) % 10] for j in range(40)) + f" number {i}." for i in range(60)]
    held_out = train[:5] + [f"An evaluation text, number {i}, about the grammar of tokens." for i in range(5)]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "eval.jsonl", held_out)


def recipe_for(tmp_path, *overrides):
    return load_recipe(None, [f"data.cache_dir={tmp_path / 'cache'}", "tokenizer.vocab_size=300", "data.block_size=32",
                              f"training.output_dir={tmp_path / 'out'}", *overrides], default=DEFAULT)


def test_explicit_eval_sources_are_removed_from_training(tmp_path, corpus):
    train, held_out = corpus
    recipe = recipe_for(tmp_path, f"data.sources=[{{files: '{train}'}}]", f"data.eval_sources=[{{files: '{held_out}'}}]")
    data = prepare_pretraining_data(recipe, recipe.model)
    assert data.stats["removed_as_eval_duplicates"] == 5
    assert data.stats["documents"] == {"train": 55, "eval": 10, "train_per_source": [55]}
    assert data.stats["eval_tokens"] > 0 and len(data.eval) > 0


def test_fraction_split_holds_documents_out_and_weights_apply_to_training_only(tmp_path, corpus):
    train, _ = corpus
    recipe = recipe_for(tmp_path, f"data.sources=[{{files: '{train}', weight: 2.0}}]", "data.eval_fraction=0.1")
    stats = prepare_pretraining_data(recipe, recipe.model).stats
    assert stats["documents"]["eval"] == 6
    assert stats["documents"]["train"] == 2 * 54  # weighted after the split: no eval text repeated into training


def test_second_preparation_comes_from_the_cache_and_changes_invalidate_it(tmp_path, corpus):
    train, _ = corpus
    recipe = recipe_for(tmp_path, f"data.sources=[{{files: '{train}'}}]")
    first = prepare_pretraining_data(recipe, recipe.model)
    second = prepare_pretraining_data(recipe, recipe.model)
    assert first.stats["from_cache"] is False and second.stats["from_cache"] is True
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.tokenizer("grammar syntax")["input_ids"] == first.tokenizer("grammar syntax")["input_ids"]
    other = recipe_for(tmp_path, f"data.sources=[{{files: '{train}'}}]", "data.block_size=16")
    assert cache_key(other, "pretraining") != cache_key(recipe, "pretraining")
    # Editing the file changes its stamp, so the cache is not reused.
    key = cache_key(recipe, "pretraining")
    with open(train, "a") as f:
        f.write('\n{"text": "one more document, long enough to keep."}')
    assert cache_key(recipe, "pretraining") != key


def test_pretrained_model_embeddings_grow_to_the_tokenizer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolkit.modeling import build_model, load_model_config
    from toolkit.recipe import Model

    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "base")

    class Vocab:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 119

        def __len__(self):
            return 120

    spec = Model(name_or_path=str(tmp_path / "base"))
    model = build_model(spec, load_model_config(spec), Vocab())
    assert model.get_input_embeddings().num_embeddings == 120
