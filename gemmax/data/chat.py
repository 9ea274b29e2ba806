"""Chat templates: the built-in Gemma and Llama 3 formats as plain Python, and any jinja template (a checkpoint's own,
`template="model"`, or a template string) rendered as transformers' `apply_chat_template` does.

`chat_segments(messages, template)` returns `[(text, is_target), ...]`; joining the texts gives the rendered
conversation. Assistant content plus the end-of-turn token that closes it are targets; everything else is prompt.

Built-in (exactly what HF renders with the official templates in tests/fixtures/chat_templates/):
Gemma: `<bos><start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n`
(role "assistant" is written "model"; a system message is folded into the first user turn, as Gemma 3's template
does — Gemma 2's template rejects it). Llama 3:
`<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` per message.
Contents are stripped of surrounding whitespace, as the templates' `| trim` does.

Jinja templates get `messages`, `add_generation_prompt` and the tokenizer's special-token strings (`bos_token`,
`eos_token`, ...) in a sandboxed environment like transformers' (trim_blocks, lstrip_blocks, loop controls,
`raise_exception`, `tojson`, `strftime_now`). Their targets are found by rendering prefixes of the conversation: an
assistant turn is what `render(messages[:i+1])` adds to `render(messages[:i], add_generation_prompt=True)`, which
must be a prefix of it; in that piece, the content and the first special token after it (the end of turn) are the
target, anything after that (a newline) is prompt.
"""

from __future__ import annotations

import functools

from gemmax.errors import GemmaxError

__all__ = [
  "render_chat",
  "chat_segments",
  "end_of_turn_ids",
  "TEMPLATES",
  "is_jinja",
  "check_template",
  "jinja_source",
]

TEMPLATES = (
  "gemma",
  "llama3",
)  # built in; besides these: "model" (the tokenizer's own) and jinja strings


def is_jinja(template) -> bool:
  """True for a jinja template string (as opposed to a template name)."""
  return isinstance(template, str) and ("{{" in template or "{%" in template)


def check_template(template, allowed=TEMPLATES + ("model",)) -> None:
  """Raises unless `template` is one of `allowed` or a jinja string."""
  if not (template in allowed or is_jinja(template)):
    shown = (
      template if not isinstance(template, str) or len(template) < 60 else template[:57] + "..."
    )
    raise GemmaxError(
      f"unknown chat template {shown!r}; expected one of {allowed} or a jinja template string"
    )


def _check(messages, template):
  check_template(template)
  if not isinstance(messages, (list, tuple)) or not messages:
    raise GemmaxError("chat messages must be a non-empty list of {'role', 'content'} dicts")
  for i, m in enumerate(messages):
    if (
      not isinstance(m, dict)
      or not isinstance(m.get("role"), str)
      or not isinstance(m.get("content"), str)
    ):
      raise GemmaxError(
        f"chat message {i} must be a dict with string 'role' and 'content', got {m!r:.80}"
      )
    if template not in TEMPLATES:
      continue  # a jinja template decides which roles and orders it accepts
    if m["role"] not in ("system", "user", "assistant"):
      raise GemmaxError(
        f"chat message {i} has role {m['role']!r}; expected system, user or assistant"
      )
    if m["role"] == "system" and i > 0:
      raise GemmaxError(f"chat message {i}: a system message may only come first")


def chat_segments(
  messages, template: str = "gemma", add_generation_prompt: bool = False, tokenizer=None
) -> list[tuple[str, bool]]:
  """[(text, is_target)] pieces of the rendered conversation; see the module docstring. `tokenizer` supplies the
  template for "model", the special-token strings a jinja template uses, and the end-of-turn tokens."""
  _check(messages, template)
  if template == "gemma":
    return _gemma(messages, add_generation_prompt)
  if template == "llama3":
    return _llama3(messages, add_generation_prompt)
  return _jinja_segments(
    messages, jinja_source(template, tokenizer), add_generation_prompt, tokenizer
  )


def render_chat(
  messages, template: str = "gemma", add_generation_prompt: bool = False, tokenizer=None
) -> str:
  """The conversation as one string, bos token included where the template writes it (tokenize it with
  add_bos=False, as transformers' apply_chat_template does)."""
  _check(messages, template)
  if template in TEMPLATES:
    return "".join(t for t, _ in chat_segments(messages, template, add_generation_prompt))
  return _render(jinja_source(template, tokenizer), messages, add_generation_prompt, tokenizer)


def end_of_turn_ids(tokenizer, template: str = "gemma") -> list[int]:
  """The token(s) that close an assistant turn under `template` (Gemma `<end_of_turn>`, Llama 3 `<|eot_id|>`,
  ChatML `<|im_end|>`, ...): the last token of a rendered answer's target, when it is a special token. Generation
  stops there; [] when the template closes turns with ordinary text."""
  turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
  target = "".join(
    t for t, is_target in chat_segments(turn, template, tokenizer=tokenizer) if is_target
  )
  ids = tokenizer.encode(target)
  return [ids[-1]] if ids and ids[-1] in set(tokenizer.special_tokens.values()) else []


def _gemma(messages, add_generation_prompt):
  prefix, turns = "", list(messages)
  if turns[0]["role"] == "system":
    prefix, turns = turns[0]["content"] + "\n\n", turns[1:]  # untrimmed, as Gemma 3's template does
  out = [("<bos>", False)]
  for i, m in enumerate(turns):
    if (m["role"] == "user") != (i % 2 == 0):
      raise GemmaxError(
        f"Gemma chat turns must alternate user/assistant starting with user; turn {i} is "
        f"{m['role']!r}"
      )
    content = m["content"].strip()
    if m["role"] == "user":
      out.append(
        ("<start_of_turn>user\n" + (prefix if i == 0 else "") + content + "<end_of_turn>\n", False)
      )
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


# --- jinja templates ----------------------------------------------------------------------------------------------


def jinja_source(template: str, tokenizer=None) -> str:
  """The jinja source for "model" (the tokenizer's own template) or a template string, checked to compile."""
  if template != "model":
    _compile(template)
    return template
  if tokenizer is None:
    raise GemmaxError("chat template 'model' needs the tokenizer whose chat template it names")
  if not getattr(tokenizer, "chat_template", None):
    raise GemmaxError(
      f"tokenizer {tokenizer.path} has no chat template (none in its tokenizer_config.json, "
      "chat_template.jinja or GGUF metadata); use template 'gemma', 'llama3' or a jinja string"
    )
  _compile(tokenizer.chat_template)
  return tokenizer.chat_template


@functools.lru_cache(maxsize=16)
def _compile(source: str):
  import datetime
  import json

  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask markers) renders its body."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters; chat templates expect plain JSON
    return json.dumps(
      x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )

  env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
  )
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(source)
  except jinja2.exceptions.TemplateError as e:
    raise GemmaxError(f"chat template does not compile: {e}") from None


def _render(source: str, messages, add_generation_prompt: bool, tokenizer) -> str:
  import jinja2

  variables = dict(tokenizer.template_tokens) if tokenizer is not None else {}
  plain = [
    dict(m) for m in messages
  ]  # a fresh copy: a template can never touch the caller's messages
  try:
    return _compile(source).render(
      messages=plain, add_generation_prompt=add_generation_prompt, **variables
    )
  except jinja2.exceptions.TemplateError as e:
    raise GemmaxError(f"chat template failed on this conversation: {e}") from None


def _jinja_segments(
  messages, source: str, add_generation_prompt: bool, tokenizer
) -> list[tuple[str, bool]]:
  full = _render(source, messages, add_generation_prompt, tokenizer)
  specials = (
    sorted(tokenizer.special_tokens, key=len, reverse=True) if tokenizer is not None else []
  )
  out, pos = [], 0
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = _render(source, messages[:i], True, tokenizer) if i else ""
    after = _render(source, messages[: i + 1], False, tokenizer)
    if not (after.startswith(before) and full.startswith(after) and len(before) >= pos):
      raise GemmaxError(
        f"chat template does not render conversation prefixes as prefixes of the whole "
        f"(at message {i}), so its assistant turns cannot be told apart; use 'gemma', "
        "'llama3' or a template whose earlier turns do not change as the conversation grows"
      )
    start, end = _target(after[len(before) :], m["content"], specials, i)
    out += [
      (full[pos : len(before) + start], False),
      (full[len(before) + start : len(before) + end], True),
    ]
    pos = len(before) + end
  out.append((full[pos:], False))
  return [(t, is_target) for t, is_target in out if t]


def _target(turn: str, content: str, specials: list[str], index: int) -> tuple[int, int]:
  """[start, end) of the target in the text one assistant turn adds: its content (trimmed or not, as the template
  writes it) through the end-of-turn token after it; without a special token there, through the last
  non-space character of the turn."""
  stripped = content.strip()
  start = turn.find(stripped)
  if start < 0:
    raise GemmaxError(
      f"chat template does not write assistant message {index}'s content as given, so its "
      "target tokens cannot be found"
    )
  end = start + len(stripped)
  lead, trail = content[: len(content) - len(content.lstrip())], content[len(content.rstrip()) :]
  if (
    stripped and lead and turn[:start].endswith(lead)
  ):  # the template keeps the content's own whitespace
    start -= len(lead)
  if stripped and trail and turn[end:].startswith(trail):
    end += len(trail)
  rest = turn[end:]
  hits = [(rest.find(s), -len(s)) for s in specials if s in rest]
  if hits:
    at, neg = min(hits)
    return start, end + at - neg
  return start, end + len(rest.rstrip())
