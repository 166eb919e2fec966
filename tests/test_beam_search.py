"""Beam search keeps finished hypotheses apart from the live beams, as t5x's does.

Our `decoding.beam_search` against t5x's `decoding.beam_search`, which t5x's DecoderOnlyModel
runs on the same weights through model/t5x_adapter.py's cached decoding. With one stop token
both draw 2 * num_beams candidates per step, move those that stop into a set of the best
finished hypotheses, keep the best others live, stop once no live beam can beat the worst
finished one, and return a live beam only for a row that finished none. The stop token is one
the random model emits, so hypotheses finish at different steps.
"""

import functools

import jax
import numpy as np
import pytest

pytest.importorskip("t5x", reason="real t5x (docs/t5x.md) is not installed")
from t5x import adafactor  # noqa: E402
from t5x import decoding as t5x_decoding  # noqa: E402
from t5x import models as t5x_models  # noqa: E402

from model import decoding  # noqa: E402
from model.config import get_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.t5x_adapter import GemmaT5xAdapter  # noqa: E402

CONFIG = get_config("tiny", num_layers=1, vocab_size=32, dtype="float32")
BOS = 2  # This test's synthetic token ids: 0 padding, 2 BOS.
LENGTH = 10  # t5x's decode buffer: prompt + continuation.
NUM_BEAMS = 3


def _params():
  """Random weights with random norm scales, so that beams diverge and stop at different steps."""
  params = DecoderOnlyModel(CONFIG).init_params(jax.random.PRNGKey(4))
  rng = np.random.default_rng(4)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: np.asarray(x) + rng.normal(0, 1.0, x.shape).astype(np.float32)
      if "scale" in jax.tree_util.keystr(path) else np.asarray(x), params)


@pytest.mark.parametrize("stop", [22])
def test_beam_search_equals_t5x_beam_search(stop):
  params = _params()

  class Vocabulary:
    eos_id = stop

  t5x_model = t5x_models.DecoderOnlyModel(
      module=GemmaT5xAdapter(CONFIG), vocabulary=Vocabulary(), optimizer_def=adafactor.Adafactor(),
      decode_fn=functools.partial(t5x_decoding.beam_search, alpha=0.0))
  prompts = np.asarray([[BOS, a, b] for a, b in [(5, 9), (11, 3), (20, 7), (14, 28), (6, 6), (30, 17)]], np.int32)
  inputs = np.zeros((len(prompts), LENGTH), np.int32)
  inputs[:, :prompts.shape[1]] = prompts
  theirs, _ = jax.jit(functools.partial(t5x_model.predict_batch_with_aux, num_decodes=NUM_BEAMS))(
      {"decoder": params}, {"decoder_input_tokens": inputs, "decoder_causal_attention": (inputs != 0).astype(np.int32),
                            "decoder_target_tokens": inputs})
  # t5x returns the last prompt token, then what it decoded into the rest of its buffer.
  num_tokens = LENGTH - prompts.shape[1]
  theirs = np.asarray(theirs)[:, 1:1 + num_tokens]
  ours, _ = decoding.beam_search(CONFIG, params, prompts, max_decode_len=num_tokens, num_beams=NUM_BEAMS,
                                 brevity_alpha=0.0, stop_tokens=(stop,))
  np.testing.assert_array_equal(ours, theirs)
  # The finished-hypothesis path is exercised, not only max length.
  assert np.any(theirs[:, :-1] == stop)
