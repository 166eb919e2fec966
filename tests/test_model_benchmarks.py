"""Smoke tests of benchmarks/model_train_step.py and benchmarks/model_decode.py on the tiny config.

Each benchmark runs end to end (ours vs transformers' sdpa Gemma on torch CPU)
and must print its ratio line; the equality check that guards the timing must
pass on twin models and stop the run when the models differ.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import _common, model_decode, model_train_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "tiny", "--attn", "sdpa", "--repeats", "1"]


def test_train_step_prints_ratio_and_losses_agree(capsys, tmp_path):
  out = tmp_path / "train.json"
  results = model_train_step.main(TINY + ["--batch_size", "2", "--seq_len", "16", "--steps", "2", "--warmup", "1",
                                          "--json", str(out)])
  printed = capsys.readouterr().out
  assert "ratio train_step tokens/s ours/transformers[sdpa] = " in printed
  assert "check step-0 loss vs transformers[sdpa]" in printed
  ours, theirs = results["implementations"]["ours"], results["implementations"]["transformers[sdpa]"]
  assert len(ours["losses"]) == len(theirs["losses"]) == 1 + 2  # warmup + repeats * steps
  np.testing.assert_allclose(ours["losses"], theirs["losses"], atol=1e-4)
  assert ours["losses"][-1] < ours["losses"][0]  # The AdamW steps really train.
  assert theirs["ratio_ours_over_this"] == pytest.approx(theirs["median_step_s"] / ours["median_step_s"])
  assert json.loads(out.read_text())["implementations"]["ours"]["tokens_per_s"] == pytest.approx(
      2 * 16 / ours["median_step_s"])


def test_decode_prints_ratio_and_tokens_agree(capsys):
  results = model_decode.main(TINY + ["--batch_size", "2", "--seq_len", "8", "--new_tokens", "6"])
  printed = capsys.readouterr().out
  assert "ratio decode tokens/s ours/transformers[sdpa] = " in printed
  assert "100.0% identical, 2/2 rows identical" in printed  # float32 greedy decoding is token-exact.
  ours = results["implementations"]["ours"]
  assert ours["tokens_per_s"] == pytest.approx(2 * 6 / ours["median_generate_s"])


def test_benchmark_refuses_to_time_different_models(monkeypatch):
  real_twin = _common.hf_twin

  def wrong_twin(config, state_dict, attn, torch, device):
    model = real_twin(config, state_dict, attn, torch, device)
    with torch.no_grad():
      model.model.norm.weight.add_(1.0)  # A different function from ours.
    return model

  monkeypatch.setattr(_common, "hf_twin", wrong_twin)
  with pytest.raises(SystemExit, match="do not compute the same function"):
    model_decode.main(TINY + ["--batch_size", "1", "--seq_len", "4", "--new_tokens", "2"])


def test_flags_and_configs():
  assert _common.parse_overrides(["num_layers=3", "dtype=float32"]) == {"num_layers": 3, "dtype": "float32"}
  with pytest.raises(ValueError, match="field=value"):
    _common.parse_overrides(["num_layers"])
  config = _common.build_config("bench_100m", {"num_layers": 2}, "bfloat16")
  assert (config.num_layers, config.embed_dim, config.dtype, config.param_dtype) == (2, 768, "bfloat16", "bfloat16")
  assert 100e6 < _common.build_config("bench_100m", {}, "float32").num_non_embedding_params() + 768 * 32000 < 120e6
  with pytest.raises(ValueError, match="Unknown Gemma config"):
    _common.build_config("nope", {}, "float32")
  with pytest.raises(SystemExit, match="max_seq_len"):
    model_train_step.main(["--config", "tiny", "--seq_len", "1000"])


def test_benchmarks_import_nothing_missing_on_the_gpu_machine():
  """The GPU machine has no gin / clu / seqio / tensorflow / beam / sentencepiece."""
  code = ("import sys; import benchmarks.model_train_step, benchmarks.model_decode; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'gin', 'clu', 'seqio', 'tensorflow', 'apache_beam', 'sentencepiece'}))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]"
