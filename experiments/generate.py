"""Terminal chat (or one-shot answer) with a gemmax model, tokens streamed as they come.

    python experiments/generate.py --config experiments/configs/generate.py [--config.prompt="..."]

The model is a registry name (the default, smollm2-135m-instruct: fetched once), an HF dir, a
.gguf file or a finetune workdir (its base + adapter); it is prompted in its own chat template
when its tokenizer has one. In the chat, `/reset` forgets the conversation and `/quit` (or
Ctrl-D) leaves.
"""

import sys

from absl import logging
from ml_collections import config_flags

from gemmax import cli, schema

import build
from schemas import GENERATE, check_model_source

_CONFIG = config_flags.DEFINE_config_file("config", None, "generation config file")


class Chat:
  def __init__(self, c):
    from gemmax.data import end_of_turn_ids
    from gemmax.data.chat import check_template
    from gemmax.sampling import Sampler

    self.c = c
    model, base, _ = build.trained_model(c.model)
    self.tok = build.tokenizer(c.model.tokenizer or base)
    own = "model" if self.tok.chat_template else None
    self.template = (
      c.chat_template
      or own
      or ("gemma" if "<start_of_turn>" in self.tok.special_tokens else "llama3")
    )
    if self.template != "none":
      check_template(self.template, ("gemma", "llama3", "model"))
    self.stop = [] if self.template == "none" else end_of_turn_ids(self.tok, self.template)
    self.sampler = Sampler(model, self.tok, max_len=c.max_len)
    self.messages = [{"role": "system", "content": c.system}] if c.system else []

  def prompt_ids(self, user_text):
    if self.template == "none":
      return self.tok.encode(user_text, add_bos=self.tok.add_bos_token)
    from gemmax.data import render_chat

    msgs = self.messages + [{"role": "user", "content": user_text}]
    text = render_chat(msgs, self.template, add_generation_prompt=True, tokenizer=self.tok)
    return self.tok.encode(text, add_bos=False)  # the template writes BOS where the model has one

  def reply(self, user_text, out=sys.stdout):
    c = self.c
    stream = lambda ids, text: (out.write(text[0]), out.flush())
    r = self.sampler.generate(
      [self.prompt_ids(user_text)],
      c.max_new_tokens,
      temperature=c.temperature,
      top_k=c.top_k or None,
      top_p=c.top_p if c.top_p < 1.0 else None,
      stop=self.stop,
      seed=c.seed,
      stream=stream,
    )
    out.write("\n")
    if r.cache_full:
      out.write(f"[the KV cache ({c.max_len} tokens) is full; /reset or raise max_len]\n")
    self.messages += [
      {"role": "user", "content": user_text},
      {"role": "assistant", "content": r.text[0].strip()},
    ]
    return r


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # no INFO lines between the chat turns
  c = _CONFIG.value
  schema.check(c, GENERATE)
  check_model_source(c)
  chat = Chat(c)
  if c.prompt:
    chat.reply(c.prompt)
    return
  print("chat: /reset to start over, /quit to leave")
  while True:
    try:
      line = input("> ").strip()
    except EOFError:
      break
    if line == "/quit":
      break
    if line == "/reset":
      chat.messages = chat.messages[:1] if c.system else []
      continue
    if line:
      try:
        chat.reply(line)
      except ValueError as e:  # e.g. the conversation no longer fits the cache
        print(f"error: {e}")


if __name__ == "__main__":
  cli.run(main)
