"""Tokenizers: a pretrained one by path or Hub id, or a new byte-level BPE trained on the train split."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import Model, Tokenizer


def pretrained_tokenizer_name(spec: Tokenizer, model: Model) -> tuple[str | None, str | None]:
    """The tokenizer to load and its revision, or (None, None) when a new one is to be trained."""
    if spec.name_or_path:
        return spec.name_or_path, spec.revision
    return model.name_or_path, model.revision  # the model's own tokenizer, at the model's revision


def open_tokenizer(name: str, revision: str | None = None, hint: str = ""):
    """A pretrained tokenizer as it is, or one line saying why it cannot be loaded."""
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as err:
        raise ToolkitError(f"could not load tokenizer {name!r}: {first_line(err)}{hint}") from None


def load_pretrained_tokenizer(name: str, spec: Tokenizer | None = None, revision: str | None = None,
                              sep_ends_text: bool = False):
    """A pretrained tokenizer with the end-of-text and padding tokens the toolkit relies on.

    `sep_ends_text`: a BERT-style tokenizer already ends every text with [SEP] (seq2seq uses it
    as end-of-sequence), so it gets no eos of its own.
    """
    spec = spec or Tokenizer()
    tok = open_tokenizer(name, revision)
    if tok.eos_token is None and not (sep_ends_text and tok.sep_token is not None):
        tok.eos_token = spec.eos_token  # packing separates documents with EOS; it must exist
    if tok.pad_token is None:
        # A distinct pad token keeps EOS out of the padding mask; pad ids never reach the loss.
        tok.pad_token = spec.pad_token
    return tok


def train_bpe(texts: Iterable[str], spec: Tokenizer, length: int | None = None):
    """Train a byte-level BPE (GPT-2 style: no unknown tokens, any byte sequence encodes)."""
    specials = spec.special_tokens
    if spec.vocab_size < spec.min_vocab_size:  # the recipe check says so first, with the file and line
        raise ToolkitError(f"tokenizer.vocab_size must be at least {spec.min_vocab_size} (256 bytes + special tokens)")
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer, length=length)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=spec.bos_token, eos_token=spec.eos_token, pad_token=spec.pad_token
    )


# For tokenizers without a template of their own: ChatML turns, each closed by the EOS
# token, so that the model learns to stop after its answer.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def decode_texts(tokenizer, rows) -> list[str]:
    """Token ids as text, special tokens left out, stripped. A byte-level BPE cut mid-character (generation
    stopped by max_new_tokens inside a multi-byte character: Chinese, Japanese, emoji) leaves the half
    character as U+FFFD at the end: that dangling piece is dropped, not scored as a character."""
    return [t.rstrip("\ufffd").strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def bos_ids(tokenizer) -> list[int]:
    """The token a prompt starts with: the tokenizer's bos, unless it has none or it doubles as eos."""
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id not in (None, tokenizer.eos_token_id) else []


# --------------------------------------------------------------------------- chat messages (fine-tuning, preference)

ROLES = ("system", "user", "assistant")


def conversation_problem(messages) -> str | None:
    """What makes `messages` no conversation to learn from, or None when it is one."""
    if not isinstance(messages, list) or not messages:
        return "a conversation is a non-empty list of {role, content} messages"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"every message needs a role ({', '.join(ROLES)}) and a text content; got {str(m)[:80]}"
    if not any(m["role"] == "assistant" for m in messages):
        return "the conversation has no assistant message, so nothing to learn"
    return None


def check_conversation(messages, where: str) -> None:
    problem = conversation_problem(messages)
    if problem:
        raise ToolkitError(f"{where}: {problem}")


class ConversationRefused(ToolkitError):
    """The chat template's own checks refused one conversation (roles that must alternate, ...)."""


def render_chat(messages, tokenizer, where: str, add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # the template's own checks, e.g. roles that must alternate
        raise ConversationRefused(f"{where}: the chat template refused the conversation: {first_line(err)}") from None
