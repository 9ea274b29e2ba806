"""gemmax.data: tokenizers, example formats and chat templates, sources, grain pipelines with packing.

Batch contract (what `make_pipeline(...)` yields; the training loop consumes it), all numpy, shape [B, T]:
  input_ids    int32  token fed at each position
  targets      int32  the next token (input_ids shifted left by one *within each example*)
  loss_mask    int32  1 where targets[b, t] is trained on (response tokens, incl. the closing eos /
                      end-of-turn), else 0; aligned with targets
  positions    int32  position of the token within its own example (restarts at 0 in each packed example)
  segment_ids  int32  1, 2, 3, ... per packed example in a row; 0 on padding
Padding slots hold 0 in every array. Attention must not cross segment ids; loss = sum(ce * loss_mask) /
sum(loss_mask).
"""

from gemmax.data.chat import TEMPLATES, chat_segments, end_of_turn_ids, render_chat
from gemmax.data.formats import (
  ALPACA_PROMPT,
  ALPACA_PROMPT_NO_INPUT,
  alpaca_messages,
  alpaca_prompt,
  classification_to_alpaca,
  example_segments,
  tokenize_example,
  tokenize_segments,
)
from gemmax.data.gguf_tokenizer import GGUFTokenizer, load_gguf_tokenizer
from gemmax.data.gguf_tokenizer_write import write_tokenizer
from gemmax.data.pipeline import DataConfig, make_dataset, make_eval_pipeline, make_pipeline
from gemmax.data.preference import (
  PairSpec,
  classification_pairs,
  load_pairs,
  preference_batches,
  tokenize_pairs,
)
from gemmax.data.sources import BadRows, SourceSpec, load_records
from gemmax.data.tokenizer import (
  HFTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  check_vocab,
  load_tokenizer,
)

__all__ = [
  "ALPACA_PROMPT",
  "ALPACA_PROMPT_NO_INPUT",
  "BadRows",
  "DataConfig",
  "GGUFTokenizer",
  "HFTokenizer",
  "SentencePieceTokenizer",
  "SourceSpec",
  "TEMPLATES",
  "Tokenizer",
  "alpaca_messages",
  "alpaca_prompt",
  "chat_segments",
  "check_vocab",
  "end_of_turn_ids",
  "classification_to_alpaca",
  "example_segments",
  "load_gguf_tokenizer",
  "load_records",
  "load_tokenizer",
  "make_dataset",
  "make_eval_pipeline",
  "make_pipeline",
  "render_chat",
  "tokenize_example",
  "tokenize_segments",
  "write_tokenizer",
  "PairSpec",
  "load_pairs",
  "preference_batches",
  "classification_pairs",
  "tokenize_pairs",
]
