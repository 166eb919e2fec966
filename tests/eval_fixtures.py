"""Helpers for the evaluation tests: a tokenizer, a tiny trained Gemma, its HF export."""

from __future__ import annotations

import glob
import io
import json
import os

import jax
import numpy as np
import optax
import sentencepiece as spm

from model.config import get_config
from model.models import DecoderOnlyModel
from pipelines.train_tokenizer import gemma_trainer_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "data", "benchmarks")

# lm-eval task configs in lm-eval's own templates (its arc_easy / triviaqa YAMLs), without data
# files and max_gen_toks: the conformance test and benchmarks/eval_vs_lm_eval.py add those.
LM_EVAL_ARC_EASY = {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                    "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}",
                    "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
LM_EVAL_TRIVIAQA = {"output_type": "generate_until", "doc_to_text": "Question: {{question}}?\nAnswer:",
                    "doc_to_target": "{{answer.aliases}}",
                    "generation_kwargs": {"until": ["\n", ".", ","], "do_sample": False, "temperature": 0.0},
                    "filter_list": [{"name": "remove_whitespace", "filter": [{"function": "remove_whitespace"},
                                                                             {"function": "take_first"}]}],
                    "metric_list": [{"metric": "exact_match"}]}


def lm_eval_config(template: dict, max_gen_toks: int, **fields) -> dict:
  """A copy of template with fields set and, for generation, max_gen_toks."""
  config = json.loads(json.dumps(template))
  if "generation_kwargs" in config:
    config["generation_kwargs"]["max_gen_toks"] = max_gen_toks
  return {**config, **fields}


def _strings(value):
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, list):
    for v in value:
      yield from _strings(v)


def benchmark_texts() -> list[str]:
  """Every string of the bundled benchmark samples (tokenizer and LM training text)."""
  out = []
  for path in sorted(glob.glob(os.path.join(BENCH_DIR, "*", "*.json*"))):
    with open(path) as f:
      records = [json.loads(l) for l in f if l.strip()] if path.endswith(".jsonl") else [json.load(f)]
    for r in records:
      out.extend(s for s in _strings(r) if s.strip())
  return out


def train_tokenizer(path: str, texts, vocab_size: int = 512) -> str:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model,
                                 **gemma_trainer_spec(vocab_size=vocab_size))
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return path


def tiny_model(vocab_size: int, max_seq_len: int = 512, seed: int = 0):
  model = DecoderOnlyModel(get_config("tiny", vocab_size=vocab_size, max_seq_len=max_seq_len,
                                      dtype="float32"))
  return model, model.init_params(jax.random.PRNGKey(seed))


def train_on_sequences(model, params, sequences, steps: int, bos_id: int, learning_rate: float = 3e-3):
  """Adam on whole sequences laid out as the trainer's feature converter lays out an example
  (model/data.py): targets ``[t1 .. tn]``, inputs ``[BOS, t1 .. tn-1]``, positions from 0."""
  width = max(len(s) for s in sequences)
  tokens = np.zeros((len(sequences), width), np.int32)
  inputs = np.zeros_like(tokens)
  for i, s in enumerate(sequences):
    tokens[i, :len(s)] = s
    inputs[i, :len(s)] = [bos_id] + list(s[:-1])
  batch = {"decoder_target_tokens": tokens, "decoder_input_tokens": inputs,
           "decoder_loss_weights": (tokens > 0).astype(np.float32)}
  optimizer = optax.adam(learning_rate)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  for _ in range(steps):
    params, state, loss = step(params, state)
  return params, float(loss)


def export_trained_tiny(workdir: str, steps: int = 60, max_seq_len: int = 512):
  """Tokenizer and tiny Gemma trained ``steps`` on the benchmark samples (greedy outputs are text,
  not near-ties between random logits), exported to ``workdir/hf`` as an HF Gemma with its
  tokenizer. Returns (tokenizer path, seqio vocabulary, HF directory)."""
  import seqio
  from model import evaluate, hf_convert
  texts = benchmark_texts()
  tokenizer = train_tokenizer(os.path.join(workdir, "tokenizer.model"), texts)
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  model, params = tiny_model(vocab.vocab_size, max_seq_len=max_seq_len)
  params, _ = train_on_sequences(model, params, [vocab.encode(t)[:96] for t in texts[:64]], steps=steps,
                                 bos_id=vocab.tokenizer.piece_to_id("<bos>"))
  hf_dir = os.path.join(workdir, "hf")
  hf_convert.export_hf(params, model.config, hf_dir)
  evaluate.export_hf_tokenizer(tokenizer, hf_dir)
  return tokenizer, vocab, hf_dir
