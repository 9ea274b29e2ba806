"""Chat templates (Gemma, Llama 3) as plain Python, so each piece of text knows whether it is trained on.

`chat_segments(messages)` returns `[(text, is_target), ...]`; joining the texts gives exactly what HF's
`apply_chat_template` renders with the official templates (tests/fixtures/chat_templates/). Assistant
content plus the end-of-turn token that closes it are targets; everything else is prompt.

Gemma: `<bos><start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n`
(role "assistant" is written "model"; a system message is folded into the first user turn, as Gemma 3's template
does — Gemma 2's template rejects it). Llama 3:
`<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` per message.
Contents are stripped of surrounding whitespace, as the templates' `| trim` does.
"""

from __future__ import annotations

__all__ = ["render_chat", "chat_segments", "TEMPLATES"]

TEMPLATES = ("gemma", "llama3")


def _check(messages, template):
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; expected one of {TEMPLATES}")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("chat messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"chat message {i} must be a dict with string 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"chat message {i} has role {m['role']!r}; expected system, user or assistant")
        if m["role"] == "system" and i > 0:
            raise ValueError(f"chat message {i}: a system message may only come first")


def chat_segments(messages, template: str = "gemma", add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """[(text, is_target)] pieces of the rendered conversation; see the module docstring."""
    _check(messages, template)
    if template == "gemma":
        return _gemma(messages, add_generation_prompt)
    return _llama3(messages, add_generation_prompt)


def render_chat(messages, template: str = "gemma", add_generation_prompt: bool = False) -> str:
    """The conversation as one string, bos token included (tokenize it with add_bos=False)."""
    return "".join(t for t, _ in chat_segments(messages, template, add_generation_prompt))


def _gemma(messages, add_generation_prompt):
    prefix, turns = "", list(messages)
    if turns[0]["role"] == "system":
        prefix, turns = turns[0]["content"] + "\n\n", turns[1:]  # untrimmed, as Gemma 3's template does
    out = [("<bos>", False)]
    for i, m in enumerate(turns):
        if (m["role"] == "user") != (i % 2 == 0):
            raise ValueError(f"Gemma chat turns must alternate user/assistant starting with user; turn {i} is "
                             f"{m['role']!r}")
        content = m["content"].strip()
        if m["role"] == "user":
            out.append(("<start_of_turn>user\n" + (prefix if i == 0 else "") + content + "<end_of_turn>\n", False))
        else:
            out += [("<start_of_turn>model\n", False), (content + "<end_of_turn>", True), ("\n", False)]
    if add_generation_prompt:
        out.append(("<start_of_turn>model\n", False))
    return out


def _llama3(messages, add_generation_prompt):
    out = [("<|begin_of_text|>", False)]
    for m in messages:
        out.append(("<|start_header_id|>" + m["role"] + "<|end_header_id|>\n\n", False))
        out.append((m["content"].strip() + "<|eot_id|>", m["role"] == "assistant"))
    if add_generation_prompt:
        out.append(("<|start_header_id|>assistant<|end_header_id|>\n\n", False))
    return out
