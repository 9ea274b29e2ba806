"""Terminal chat (or one-shot answer) with a gemmax model, tokens streamed as they come.

    python experiments/generate.py --config experiments/configs/generate.py [--config.prompt="..."]

In the chat, `/reset` forgets the conversation and `/quit` (or Ctrl-D) leaves.
"""
import sys

from ml_collections import config_flags

from gemmax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "generation config file")
END_OF_TURN = {"gemma": "<end_of_turn>", "llama3": "<|eot_id|>"}


class Chat:
  def __init__(self, c):
    from gemmax.evals.loading import load_model, load_tokenizer_for
    from gemmax.sampling import Sampler
    self.c = c
    model, base = load_model(c.model.path, c.model.adapter, c.model.dtype, c.model.quantize)
    self.tok = load_tokenizer_for(base, c.model.tokenizer)
    self.template = c.chat_template or ("gemma" if model.config.family == "gemma2" else "llama3")
    if self.template not in ("gemma", "llama3", "none"):
      raise ValueError(f"chat_template {self.template!r} is not gemma|llama3|none")
    self.sampler = Sampler(model, self.tok, max_len=c.max_len)
    self.messages = [{"role": "system", "content": c.system}] if c.system else []

  def prompt_ids(self, user_text):
    if self.template == "none":
      return self.tok.encode(user_text, add_bos=True)
    from gemmax.data import render_chat
    msgs = self.messages + [{"role": "user", "content": user_text}]
    return self.tok.encode(render_chat(msgs, self.template, add_generation_prompt=True),
                           add_bos=False)  # the rendered chat already holds BOS

  def reply(self, user_text, out=sys.stdout):
    c = self.c
    stop = [END_OF_TURN[self.template]] if self.template in END_OF_TURN else []
    for s in list(stop):  # also stop on the marker's id when the tokenizer has it as one token
      try:
        stop.append(int(self.tok.token_to_id(s)))
      except (KeyError, AttributeError):
        pass
    stream = lambda ids, text: (out.write(text[0]), out.flush())
    r = self.sampler.generate([self.prompt_ids(user_text)], c.max_new_tokens,
                              temperature=c.temperature, top_k=c.top_k or None,
                              top_p=c.top_p if c.top_p < 1.0 else None, stop=stop, seed=c.seed,
                              stream=stream)
    out.write("\n")
    if r.cache_full:
      out.write(f"[the KV cache ({c.max_len} tokens) is full; /reset or raise max_len]\n")
    self.messages += [{"role": "user", "content": user_text},
                      {"role": "assistant", "content": r.text[0].strip()}]
    return r


def main(argv):
  del argv
  c = _CONFIG.value
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
