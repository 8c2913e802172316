"""A prompt conversation as token ids: the one place a prompt becomes ids, so indexing, DPO, SFT and
generation read a prompt the same way."""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import UsageError

_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def chat_prompt_ids(tokenizer, prompt: Sequence[dict], max_tokens: int | None = None) -> list[int]:
    """Token ids of a prompt conversation, ready for the reply: the tokenizer's chat template with
    the generation prompt. A base model's tokenizer has no template (the catalogue's Gemma-2-2B):
    then a plain transcript, "User: ...\n\nAssistant:". A template that refuses a system turn
    (Gemma's) gets the system text at the head of the first user turn, as Gemma's card advises.
    With `max_tokens`, the last `max_tokens` ids (the end of a prompt is what a reply answers).
    Raises UsageError when the template refuses the conversation otherwise."""
    messages = list(prompt)
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(f"{_ROLE.get(m['role'], m['role'])}: {m['content']}" for m in messages)
        ids = tokenizer(text + "\n\nAssistant:", add_special_tokens=True)["input_ids"]
        return ids[-max_tokens:] if max_tokens else ids
    from jinja2 import TemplateError

    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except TemplateError as exc:
        if messages[0]["role"] != "system" or len(messages) < 2 or messages[1]["role"] != "user":
            raise UsageError(f"the model's chat template refuses this prompt: {exc}") from None
        merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        return chat_prompt_ids(tokenizer, [merged, *messages[2:]], max_tokens)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    out = list(out)
    return out[-max_tokens:] if max_tokens else out
