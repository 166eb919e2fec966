r"""Samples continuations of prompts from a trained checkpoint (KV-cache decoding).

  python -m model.infer --gin_file=gin/small_cpu.gin --gin_file=gin/runs/infer.gin \
      --gin.DATA_DIR="'out/demo/data'" --gin.MODEL_DIR="'/tmp/run'" \
      --prompt="The history of" --method=top_k --temperature=0.8

Prompts are tokenized with DATA_DIR's SentencePiece vocabulary (tasks.get_vocabulary) and BOS is
prepended; generation stops at its EOS or `<end_of_turn>` (ids from the vocabulary,
`tasks.special_tokens`). Without DATA_DIR, prompts are comma-separated token ids and the output is
ids, with the special ids of the built-in synthetic task's vocabulary (`model.data`).
Flags given on the command line (--method, --temperature, ...) override the gin values.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import gin
import jax
import numpy as np
from absl import flags

from model import checkpoints
from model import gin_utils
from model.partitioning import Partitioner

if __name__ == "__main__":
  # Run the importable `model.infer`, not this `__main__` copy: gin must see each configurable once.
  from model import infer as _infer_module
  gin_utils.run(_infer_module.main)

_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
_METHOD = flags.DEFINE_enum("method", None, ["greedy", "temperature", "top_k", "top_p", "beam"],
                            "Decoding method (overrides gin).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature (overrides gin).")
_TOP_K = flags.DEFINE_integer("top_k", None, "k for top_k sampling (overrides gin).")
_TOP_P = flags.DEFINE_float("top_p", None, "p for top_p sampling (overrides gin).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", None, "Beams for beam search (overrides gin).")
_MAX_DECODE_LEN = flags.DEFINE_integer("max_decode_len", None, "Tokens to generate (overrides gin).")
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (overrides gin).")
_CHAT = flags.DEFINE_bool("chat", False, "Multi-turn chat: each --prompt is the next user turn of one "
                          "conversation in Gemma's dialogue format; each answer stops at <end_of_turn>.")


def special_ids(vocab) -> tuple[int, tuple[int, ...]]:
  """(BOS, stop ids) of the vocabulary in use; without a tokenizer, the synthetic task's."""
  if vocab is None:
    from model import data
    synthetic = data.SyntheticVocabulary()
    return synthetic.bos_id, (synthetic.eos_id,)
  from tasks import special_tokens
  tokens = special_tokens.special_tokens(vocab)
  return tokens.bos, tokens.stop_ids


def _stop_at_eos(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
  out = []
  for t in ids:
    if t in stop_ids or t == 0:
      break
    out.append(int(t))
  return out


@gin.configurable
def infer(*, model, prompts: Sequence[str], checkpoint_path: Optional[str] = None,
          model_dir: Optional[str] = None, data_dir: Optional[str] = None,
          partitioner: Optional[Partitioner] = None, max_decode_len: int = 64,
          method: str = "top_k", temperature: float = 1.0, top_k: int = 40, top_p: float = 0.95,
          num_beams: int = 4, seed: int = 0, output_path: Optional[str] = None,
          chat: bool = False) -> list[dict]:
  """Returns (and prints) `[{"prompt", "completion", "completion_ids"}]`, one per prompt.

  With chat=True the prompts are the user turns of one conversation (`tasks.chat_template`):
  turn i is generated after the rendered turns before it, and its answer becomes a model turn.
  """
  from model import decoding
  if not prompts:
    raise ValueError("Give at least one --prompt")
  step_dir = checkpoints.resolve_checkpoint_path(checkpoint_path, model_dir)
  if chat:
    if not data_dir:
      raise ValueError("--chat needs DATA_DIR (its tokenizer renders the dialogue format)")
    return _chat(model, prompts, step_dir, data_dir, partitioner or Partitioner(), seed, output_path,
                 dict(max_decode_len=max_decode_len, method=method, temperature=temperature,
                      top_k=top_k, top_p=top_p, num_beams=num_beams))
  if data_dir:
    import tasks
    vocab = tasks.get_vocabulary(data_dir)
    prompt_ids = [vocab.encode(p) for p in prompts]
  else:
    vocab = None
    try:
      prompt_ids = [[int(t) for t in p.split(",") if t.strip()] for p in prompts]
    except ValueError:
      raise ValueError("Without DATA_DIR (no tokenizer) prompts must be comma-separated token "
                       f"ids, got {list(prompts)}") from None
  for p, ids in zip(prompts, prompt_ids):
    bad = [t for t in ids if not 0 < t < model.config.vocab_size]
    if bad:
      raise ValueError(f"Prompt {p!r} has token ids outside [1, {model.config.vocab_size}): {bad}")
  partitioner = partitioner or Partitioner()
  abstract = model.abstract_params()
  shardings = partitioner.param_shardings(abstract, model.logical_axes())
  params = checkpoints.load_params(step_dir, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings))
  bos_id, stop_ids = special_ids(vocab)
  batch = {"decoder_input_tokens": decoding.pad_prompts(prompt_ids, bos_id)}
  kwargs = dict(max_decode_len=max_decode_len, method=method, temperature=temperature,
                top_k=top_k, top_p=top_p, num_beams=num_beams)
  with partitioner.activate():
    tokens = model.predict_batch(params, batch, rng=jax.random.PRNGKey(seed), bos_id=bos_id,
                                 stop_tokens=stop_ids, **kwargs)
  results = []
  for prompt, row in zip(prompts, np.asarray(jax.device_get(tokens))):
    ids = _stop_at_eos(row.tolist(), stop_ids)
    text = vocab.decode(ids) if vocab is not None else ",".join(map(str, ids))
    results.append({"prompt": prompt, "completion": text, "completion_ids": ids})
    print(f"PROMPT: {prompt}\nOUTPUT: {text}\n", flush=True)
  if output_path and jax.process_index() == 0:
    with open(output_path, "w") as f:
      f.writelines(json.dumps({**r, "checkpoint": step_dir, **kwargs}, sort_keys=True) + "\n"
                   for r in results)
  return results


def _load(model, step_dir, partitioner):
  abstract = model.abstract_params()
  shardings = partitioner.param_shardings(abstract, model.logical_axes())
  return checkpoints.load_params(step_dir, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings))


def _chat(model, user_turns, step_dir, data_dir, partitioner, seed, output_path, kwargs) -> list[dict]:
  """Multi-turn chat: one answer per user turn, each generated after the whole dialogue so far."""
  import tasks
  from model import decoding
  from tasks import chat_template as ct
  vocab = tasks.get_vocabulary(data_dir)
  bos_id, stop_ids = special_ids(vocab)
  params = decoding.decoding_params(_load(model, step_dir, partitioner))  # Made once for every turn.
  turns, results = [], []
  for i, user in enumerate(user_turns):
    turns = ct.normalize(ct.messages_of(turns) + [{"role": ct.USER, "content": user}])
    ids = ct.prompt_ids(turns, vocab)
    if len(ids) + kwargs["max_decode_len"] > model.config.max_seq_len:
      raise ValueError(f"The dialogue is {len(ids)} tokens after turn {i + 1}; with max_decode_len "
                       f"{kwargs['max_decode_len']} it exceeds the model's max_seq_len {model.config.max_seq_len}")
    batch = {"decoder_input_tokens": decoding.pad_prompts([ids], bos_id)}
    with partitioner.activate():
      tokens = model.predict_batch(params, batch, rng=jax.random.fold_in(jax.random.PRNGKey(seed), i),
                                   bos_id=bos_id, stop_tokens=stop_ids, **kwargs)
    row = np.asarray(jax.device_get(tokens))[0].tolist()
    answer_ids = _stop_at_eos(row, stop_ids)
    stopped = next((int(t) for t in row if t in stop_ids or t == 0), None)
    text = vocab.decode(answer_ids)
    results.append({"prompt": user, "completion": text, "completion_ids": answer_ids,
                    "stop_id": stopped, "turn": i + 1})
    print(f"USER: {user}\nMODEL: {text}\n", flush=True)
    # An empty answer cannot be a model turn; it is shown, and the next turn continues without it.
    turns = turns + [ct.Turn(ct.MODEL, text.strip())] if text.strip() else turns[:-1]
  if output_path and jax.process_index() == 0:
    with open(output_path, "w") as f:
      f.writelines(json.dumps({**r, "checkpoint": step_dir, **kwargs}, sort_keys=True) + "\n" for r in results)
  return results


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  from model import train  # noqa: F401  Registers train's configurables: run files bind them.
  gin_utils.parse_gin_flags()
  overrides = {name: flag.value for name, flag in (
      ("method", _METHOD), ("temperature", _TEMPERATURE), ("top_k", _TOP_K), ("top_p", _TOP_P),
      ("num_beams", _NUM_BEAMS), ("max_decode_len", _MAX_DECODE_LEN), ("seed", _SEED))
      if flag.value is not None}
  if _PROMPT.value:
    overrides["prompts"] = _PROMPT.value
  if _CHAT.value:
    overrides["chat"] = True
  infer(**overrides)
