"""The seq2seq model: which kind it is, how it is built, and how it generates.

Four ways to get it: a config of any encoder-decoder type (t5, bart, marian, ...) trained
from scratch with a new tokenizer; pretrained encoder-decoder weights; an
EncoderDecoderModel warm-started from a pretrained encoder (its copy becomes the decoder,
with cross-attention added); or a decoder-only model (gpt2, llama, ..., from a config or
pretrained), which reads each pair as a prompt followed by its target.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel, set_seed
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

from toolkit.errors import ToolkitError
from toolkit.modeling import ResolvedModel, build_model, is_decoder_only, load_model_config, locate_pretrained
from toolkit.recipe import Recipe
from toolkit.tasks.seq2seq.data import encode_prompts, special_ids
from toolkit.tasks.seq2seq.section import DECODER_ONLY, ENCODER_DECODER, Seq2Seq, generation_settings
from toolkit.tokenizer import decode_texts


def model_architecture(recipe: Recipe, model: ResolvedModel) -> str:
    """Encoder-decoder or decoder-only, from the config alone (no weights read, nothing converted): before any work."""
    spec = model.spec
    if recipe.seq2seq.encoder:
        if spec.name_or_path:
            raise ToolkitError("set model.name_or_path or seq2seq.encoder, not both: seq2seq.encoder warm-starts a new"
                               " encoder-decoder, model.name_or_path loads a whole one")
        return ENCODER_DECODER
    if spec.name_or_path:
        kind = (model.config or load_model_config(spec)).model_type  # a Hub model's config is fetched
        what = f"{spec.name_or_path} is a {kind!r} model"
    else:
        kind, what = spec.model_type, f"model.model_type {spec.model_type!r} is"
    if kind in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return ENCODER_DECODER
    if is_decoder_only(kind):
        return DECODER_ONLY
    raise ToolkitError(f"{what} neither an encoder-decoder (t5, bart, marian) nor a decoder-only model (gpt2, llama);"
                       " set seq2seq.encoder to warm-start an encoder-decoder from it")


def build_seq2seq_model(recipe: Recipe, resolved: ResolvedModel, tokenizer, architecture: str, seed: int = 42):
    """The model sized to the tokenizer, its special ids and the recipe's generation settings set."""
    set_seed(seed)
    spec, s2s = resolved.spec, recipe.seq2seq
    if architecture == DECODER_ONLY:
        model = build_model(spec, resolved.config, tokenizer, seed=seed)
    elif spec.name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(spec.name_or_path, revision=spec.revision)
    elif s2s.encoder:
        encoder = locate_pretrained(s2s.encoder)
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, locate_pretrained(s2s.decoder or s2s.encoder))
    else:
        config = copy.deepcopy(resolved.config)
        config.vocab_size = len(tokenizer)
        model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation=spec.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        if isinstance(model, EncoderDecoderModel):  # it refuses to resize itself; its two halves can
            model.encoder.resize_token_embeddings(len(tokenizer))
            model.decoder.resize_token_embeddings(len(tokenizer))
            model.config.decoder.vocab_size = len(tokenizer)
        else:
            model.resize_token_embeddings(len(tokenizer))
    configure_generation(model, tokenizer, s2s, architecture)
    return model


def configure_generation(model, tokenizer, spec: Seq2Seq, architecture: str) -> None:
    """The tokenizer's special ids and the recipe's generation settings, on the model and its generation config.
    Also applied to a reloaded run: an adapter folder comes back with its base's settings, not the run's."""
    start, eos, pad = special_ids(tokenizer)
    ids = {"eos_token_id": eos, "pad_token_id": pad}
    if architecture == ENCODER_DECODER:
        ids["decoder_start_token_id"] = start
        model.generation_config.bos_token_id = None  # the decoder start is set; no second forced token
    for config in (model.config, model.generation_config):
        for key, value in ids.items():
            setattr(config, key, value)
    model.generation_config.update(**generation_settings(spec))
    model.generation_config.max_length = None


def left_padded(rows: list[list[int]], pad: int, device=None):
    """Prompts aligned at their ends, as a decoder-only model continues them: (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def continue_prompts(model, rows: list[list[int]], pad: int, synced_gpus: bool = False):
    """What a decoder-only model generates after each prompt (the prompt itself cut off).

    `synced_gpus`: with sharded weights (FSDP, ZeRO-3) every process keeps stepping until all
    are done, or one that finished early would leave the others waiting in a gather.
    """
    ids, mask = left_padded(rows, pad, model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_length=None, synced_gpus=synced_gpus)
    return out[:, ids.shape[1]:]


def translate(model, tokenizer, spec: Seq2Seq, sources: list[str], synced_gpus: bool = False) -> list[str]:
    """Generated outputs for a few sources (the card's samples), with the recipe's generation settings."""
    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            batch = tokenizer([spec.prefix + s for s in sources], return_tensors="pt", padding=True, truncation=True,
                              max_length=spec.max_source_length).to(model.device)
            out = model.generate(**batch, max_length=None, synced_gpus=synced_gpus)
        else:
            out = continue_prompts(model, encode_prompts(tokenizer, spec, sources), special_ids(tokenizer)[2],
                                   synced_gpus)
    model.train(model_was_training)
    return decode_texts(tokenizer, out)
