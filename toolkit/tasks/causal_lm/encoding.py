"""Encode examples for fine-tuning: token ids and labels, loss only where the model should learn.

prompt/completion: the prompt carries label -100, the completion and its EOS are learned.
chat: rendered with the tokenizer's chat template; assistant turns (with the template's
end-of-turn token) are learned, everything else is -100.
"""

from __future__ import annotations

from datasets import Dataset, Features, Sequence, Value

from toolkit.errors import ToolkitError
from toolkit.loss import IGNORE
from toolkit.tokenizer import ConversationRefused, bos_ids, check_conversation, ensure_chat_template, render_chat


def encode_prompt_completion(prompt: str, completion: str, tokenizer, completion_only_loss: bool):
    p = bos_ids(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    labels = ([IGNORE] * len(p) if completion_only_loss else list(p)) + c
    return p + c, labels


def encode_chat(messages, tokenizer, completion_only_loss: bool, where: str = "conversation"):
    """Render the whole conversation once; mark assistant turns by rendering the prefixes around them."""
    check_conversation(messages, where)
    text = render_chat(messages, tokenizer, where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            # Everything the template puts before the answer (system prompt, headers) is context.
            through = render_chat(messages[: i + 1], tokenizer, where)
            if i:
                before = render_chat(messages[:i], tokenizer, where, add_generation_prompt=True)
            else:  # templates refuse an empty conversation: the answer starts where its text does
                before = through[: through.rfind(m["content"])]
            if not (text.startswith(before) and text.startswith(through)):
                raise ToolkitError(f"{where}: the chat template renders a conversation differently from its beginning;"
                                   " set data.completion_only_loss=false or use another template")
            spans.append((len(before), len(through)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if not completion_only_loss:
        return ids, list(ids)
    # A token that overlaps an answer is learned, even if it starts in the header (a shared space).
    labels = [
        tok if any(a < e and b > s for s, e in spans) else IGNORE
        for tok, (a, b) in zip(ids, enc["offset_mapping"])
    ]
    return ids, labels


def encode_examples(ds: Dataset, tokenizer, fmt: str, max_length: int, too_long: str, completion_only_loss: bool,
                    num_proc: int | None = None, bad_rows: str = "error") -> tuple[Dataset, dict]:
    """Token ids and labels for every example; over-long examples skipped (counted) or refused, and so are
    conversations the chat template refuses (`bad_rows`, data.bad_rows)."""
    if fmt == "chat":
        ensure_chat_template(tokenizer)

    def encode(batch, indices):
        out = {"input_ids": [], "labels": [], "too_long": [], "refused": []}
        for n, i in enumerate(indices):
            where = f"example {i}"
            if fmt == "chat":
                try:
                    ids, labels = encode_chat(batch["messages"][n], tokenizer, completion_only_loss, where)
                except ConversationRefused:
                    if bad_rows == "error":
                        raise
                    ids, labels = [], []
                out["refused"].append(not ids)
            else:
                ids, labels = encode_prompt_completion(batch["prompt"][n], batch["completion"][n], tokenizer,
                                                       completion_only_loss)
            over = len(ids) > max_length
            if over and too_long == "error":
                raise ToolkitError(f"{where} has {len(ids)} tokens, more than data.max_length={max_length};"
                                   " raise data.max_length or set data.too_long=skip")
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["too_long"].append(over)
            if fmt != "chat":
                out["refused"].append(False)
        return out

    encoded = ds.map(
        encode, batched=True, with_indices=True, num_proc=num_proc, remove_columns=ds.column_names, desc="encoding",
        features=Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
                           "too_long": Value("bool"), "refused": Value("bool")}),
    )
    skipped, refused = int(sum(encoded["too_long"])), int(sum(encoded["refused"]))
    encoded = encoded.filter(lambda b: [not (t or r) for t, r in zip(b["too_long"], b["refused"])], batched=True)
    encoded = encoded.remove_columns(["too_long", "refused"])
    learned = sum(sum(1 for t in row if t != IGNORE) for row in encoded["labels"])
    stats = {"examples": len(encoded), "skipped_too_long": skipped, "learned_tokens": learned}
    if fmt == "chat":
        stats["skipped_bad_rows"] = refused  # refused by the chat template (roles out of order, ...)
    return encoded, stats
