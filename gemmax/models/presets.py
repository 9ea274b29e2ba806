"""Named presets: values from the published HF config.json files, plus tiny test sizes."""
from __future__ import annotations

_GEMMA2 = dict(
    family="gemma2", vocab_size=256000, head_dim=256, rope_theta=10000.0, rms_norm_eps=1e-6,
    sliding_window=4096, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0, tie_word_embeddings=True, max_position_embeddings=8192,
    hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1, pad_token_id=0)

_LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)

_LLAMA3 = dict(
    family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
    tie_word_embeddings=False, hidden_activation="silu", bos_token_id=128000,
    eos_token_id=128001, pad_token_id=None)

PRESETS: dict[str, dict] = {
    "gemma2-2b": dict(_GEMMA2, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4),
    "gemma2-9b": dict(_GEMMA2, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                      num_attention_heads=16, num_key_value_heads=8),
    "gemma2-27b": dict(_GEMMA2, hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                       query_pre_attn_scalar=144),
    "llama2-7b": dict(_LLAMA3, vocab_size=32000, intermediate_size=11008, num_key_value_heads=32,
                      rope_theta=10000.0, max_position_embeddings=4096, bos_token_id=1,
                      eos_token_id=2),
    "llama3-8b": dict(_LLAMA3),
    "llama3.1-8b": dict(_LLAMA3, rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072),
    "llama3.1-70b": dict(_LLAMA3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, rope_scaling=_LLAMA3_ROPE,
                         max_position_embeddings=131072),
    "llama3.2-1b": dict(_LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        head_dim=64, tie_word_embeddings=True, max_position_embeddings=131072,
                        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),
    "llama3.2-3b": dict(_LLAMA3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                        num_attention_heads=24, tie_word_embeddings=True,
                        max_position_embeddings=131072,
                        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),
    # Tiny sizes for tests: every mechanism of the family, a few thousand parameters.
    "gemma2-tiny": dict(_GEMMA2, vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                        max_position_embeddings=512),
    "llama3-tiny": dict(_LLAMA3, vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, max_position_embeddings=512, bos_token_id=1,
                        eos_token_id=2, rope_scaling=dict(_LLAMA3_ROPE, factor=8.0,
                                                          original_max_position_embeddings=64)),
}

# Published parameter totals (model cards / safetensors index metadata).
PUBLISHED_PARAMS = {
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "llama2-7b": 6_738_415_616,
    "llama3-8b": 8_030_261_248,
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
}
