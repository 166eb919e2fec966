"""Gemma 1 decoder (Flax linen) and its t5x-style trainer.

Model side: `model.config` (GemmaConfig, get_config), `model.modules` (layers),
`model.transformer` (Transformer, init_cache), `model.decoding` (samplers, beam
search, prompt helpers) and `model.models` (DecoderOnlyModel: loss_fn,
score_batch, predict_batch). See docs/model.md.
"""
