"""Smoke tests of benchmarks/model_train_step.py and benchmarks/model_decode.py on the tiny config.

Each benchmark runs end to end through benchmarks/harness.py (ours and transformers' sdpa Gemma on
torch CPU, each in its own pinned worker process, two rounds) and must record per-pair ratios
and a result file; the equality checks that guard the timing must stop a run whose two models
compute different things. No timing is asserted.
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
SMOKE = ["--config", "tiny", "--peers", "sdpa", "--pairs", "2", "--warmup", "1", "--smoke"]


def test_train_step_records_paired_ratios_and_losses_agree(tmp_path):
  out = tmp_path / "train.json"
  result = model_train_step.main(SMOKE + ["--batch_size", "2", "--seq_len", "16", "--result", str(out)])
  ours, theirs = result["sides"]["ours"], result["sides"]["transformers[sdpa]"]
  losses_ours = ours["warmup_values"] + ours["values"]
  losses_theirs = theirs["warmup_values"] + theirs["values"]
  assert len(losses_ours) == len(losses_theirs) == 3  # 1 warm-up + 2 timed steps, each a real update.
  np.testing.assert_allclose(losses_ours, losses_theirs, atol=1e-4)  # Same weights, batch and AdamW.
  assert losses_ours[-1] < losses_ours[0]
  assert theirs["torch_threads"] == 1 and ours["affinity"] == theirs["affinity"]
  ratios = result["ratios"]["transformers[sdpa]"]
  assert ratios["cpu"]["per_pair"] == pytest.approx([t / o for t, o in zip(theirs["cpu_s"], ours["cpu_s"])])
  assert ours["tokens_per_s_wall"] == pytest.approx(2 * 16 / np.median(ours["wall_s"]))
  saved = json.loads(out.read_text())
  assert saved["loss_check"]["ours"] == pytest.approx(losses_ours[:2])
  assert saved["settings"]["config"]["num_layers"] == 2


def test_decode_records_paired_ratios_and_tokens_agree(capsys):
  result = model_decode.main(SMOKE + ["--batch_size", "2", "--seq_len", "8", "--new_tokens", "6", "--result", "none"])
  assert "100.0% identical, 2/2 rows identical" in capsys.readouterr().out  # float32 greedy is token-exact.
  assert result["token_check"] == {"transformers[sdpa]": 1.0}
  assert np.asarray(result["sides"]["ours"]["values"][0]).shape == (2, 6)
  assert set(result["ratios"]) == {"transformers[sdpa]"}


def _result(values):
  return {"sides": {name: {"warmup_values": v[:1], "values": v[1:]} for name, v in values.items()}}


def test_checks_refuse_to_time_different_models():
  same = _result({"ours": [5.0, 4.0, 3.0], "transformers[sdpa]": [5.0, 4.0, 3.0]})
  model_train_step.check_losses(same, "float32", enforce=True)
  assert same["loss_check"]["transformers[sdpa]"] == [5.0, 4.0]
  with pytest.raises(SystemExit, match="do not compute the same function"):
    model_train_step.check_losses(_result({"ours": [5.0, 4.0], "transformers[sdpa]": [5.01, 4.0]}), "float32", True)
  with pytest.raises(SystemExit, match="do not compute the same function"):  # Gradients or update differ.
    model_train_step.check_losses(_result({"ours": [5.0, 4.0], "transformers[sdpa]": [5.0, 4.1]}), "float32", True)
  tokens = {"ours": {"values": [[[1, 2], [3, 4]]]}, "transformers[sdpa]": {"values": [[[1, 2], [3, 5]]]}}
  with pytest.raises(SystemExit, match="differ"):
    model_decode.check_tokens({"sides": tokens}, "float32", enforce=True)
  flaky = {"ours": {"values": [[[1, 2]], [[1, 3]]]}}
  with pytest.raises(SystemExit, match="different tokens in different runs"):
    model_decode.check_tokens({"sides": flaky}, "float32", enforce=True)


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
  with pytest.raises(ValueError, match="at least 7 pairs"):
    model_train_step.main(["--config", "tiny", "--pairs", "3", "--seq_len", "8", "--result", "none"])


def test_benchmarks_import_nothing_missing_on_the_gpu_machine():
  """The GPU machine has no gin / clu / seqio / tensorflow / beam / sentencepiece."""
  code = ("import sys; import benchmarks.model_train_step, benchmarks.model_decode, benchmarks.harness; "
          "import benchmarks._common; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'gin', 'clu', 'seqio', 'tensorflow', 'apache_beam', 'sentencepiece'}))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]"


def test_variants_time_the_code_as_it_was_in_the_same_run():
  """`--variants copies` runs ours as it was before it stopped copying weights, and (decoding)
  `training_layout` over the params as initialised: sides of their own, computing the same losses /
  tokens (only the speed differs)."""
  result = model_train_step.main(SMOKE + ["--batch_size", "2", "--seq_len", "16", "--variants", "copies",
                                          "--result", "none"])
  assert result["sides"]["ours[copies]"]["values"] == pytest.approx(result["sides"]["ours"]["values"], abs=1e-5)
  result = model_decode.main(SMOKE + ["--batch_size", "2", "--seq_len", "8", "--new_tokens", "4",
                                      "--variants", "copies", "training_layout", "--result", "none"])
  assert result["sides"]["ours[copies]"]["values"] == result["sides"]["ours"]["values"]
  assert result["sides"]["ours[training_layout]"]["values"] == result["sides"]["ours"]["values"]


def test_roofline_counts_the_flops_xla_compiles():
  """The roofline's model FLOPs (benchmarks/cpu_roofline.py) against XLA's own count of the
  compiled forward pass, and its parameter count against the initialised model's."""
  import dataclasses

  import jax
  import jax.numpy as jnp

  from benchmarks import cpu_roofline
  from model.transformer import Transformer

  config = _common.build_config("tiny", {}, "float32")
  c = dataclasses.asdict(config)
  tokens = jnp.ones((2, 32), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(32), (2, 32))
  params = Transformer(config).init(jax.random.PRNGKey(0), tokens, positions)["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul = sum(leaf.size for path, leaf in flat if "scale" not in jax.tree_util.keystr(path))
  assert cpu_roofline.matmul_params(c) == matmul
  # The gemv sides multiply by every weight matrix once: the model's parameters, no more.
  assert sum(k * n for k, n in cpu_roofline.decode_weight_shapes(c)) == matmul
  forward = jax.jit(lambda p, t, pos: Transformer(config).apply({"params": p}, t, pos)[0])
  xla_flops = forward.lower(params, jax.ShapeDtypeStruct(tokens.shape, jnp.int32),
                            jax.ShapeDtypeStruct(positions.shape, jnp.int32)).compile().cost_analysis()["flops"]
  ours = 2 * 2 * 32 * cpu_roofline.matmul_params(c) + cpu_roofline.attention_flops(c, 2, 32)
  assert ours <= xla_flops <= 1.15 * ours  # XLA also counts the elementwise work.
  settings = {"config": c, "batch_size": 2, "seq_len": 32, "new_tokens": 5}
  step = cpu_roofline.train_step_bound(settings, peak_flops=1e9, read_bytes_per_s=1e9)
  assert step["flops"] == 3 * ours and step["bound_cpu_s"] > step["flops"] / 1e9
  decode = cpu_roofline.decode_bound(settings, peak_flops=1e9, read_bytes_per_s=1e9)
  assert decode["bytes"] == 4 * 4 * cpu_roofline.matmul_params(c)  # Every weight, once per token after the first.


def test_roofline_decode_forms_agree_and_the_xla_floor_needs_weights_beyond_the_cache():
  """The gemv forms stored [out, in] compute the same products; a decode row's XLA floor reads its
  weights at the fastest XLA form's rate, and only where they do not fit in the last-level cache."""
  import dataclasses

  from benchmarks import cpu_roofline

  c = dataclasses.asdict(_common.build_config("tiny", {}, "float32"))
  values = {layout: cpu_roofline.jax_gemv_side(c, 2, layout)()
            for layout in ("out_in", "weights_first", "multiply_reduce")}
  assert values["multiply_reduce"] == pytest.approx(values["out_in"], rel=1e-5)
  assert values["weights_first"] == pytest.approx(values["out_in"], rel=1e-5)

  settings = {"config": c, "batch_size": 2, "seq_len": 8, "new_tokens": 5, "dtype": "float32"}
  result = {"settings": settings, "sides": {"ours": {"cpu": {"median": 2.0}}, "transformers[sdpa]": {"cpu": {"median": 3.0}}},
            "ratios": {"transformers[sdpa]": {"cpu": {"median": 1.5}}}}
  rates = {"jax_gemv[tiny_b2][in_out]": 1e9, "jax_gemv[tiny_b2][weights_first]": 4e9,
           "torch_gemv[tiny_b2][in_out]": 8e9}  # torch's kernels are not XLA's: no part of the floor.
  weights = cpu_roofline.weight_bytes(result)
  row = cpu_roofline.bound_row("decode", "decode.json", result, 2e9, 10e9, 1e9, rates, cache_bytes=weights - 1)
  prefill_s = cpu_roofline.decode_bound(settings, 1e9, 1e30)["bound_cpu_s"]
  floor = prefill_s + weights * (settings["new_tokens"] - 1) / 4e9
  assert row["xla_floor_stream_rate"] == "jax_gemv[tiny_b2][weights_first]"
  assert row["xla_floor_cpu_s"] == pytest.approx(floor)
  assert row["max_ratio_with_xla_kernels"] == pytest.approx(3.0 / floor)
  fits = cpu_roofline.bound_row("decode", "decode.json", result, 2e9, 10e9, 1e9, rates, cache_bytes=weights)
  unknown = cpu_roofline.bound_row("decode", "decode.json", result, 2e9, 10e9, 1e9, rates, cache_bytes=None)
  assert "xla_floor_cpu_s" not in fits and "xla_floor_cpu_s" not in unknown
  assert fits["kernel_stream_rates"] == rates


def test_roofline_streams_at_the_fastest_reader_of_each_size():
  """A bound's read rate is the fastest measured stream of that many bytes: a gemv that reads the
  weights faster than numpy's sum raises it; one over another size, or slower, does not."""
  from benchmarks import cpu_roofline

  streams = cpu_roofline.fastest_streams(
      {100: 10.0, 200: 20.0},
      {"jax_gemv[a][weights_first]": 15.0, "jax_gemv[a][in_out]": 5.0, "torch_gemv[b][in_out]": 50.0},
      {"jax_gemv[a][weights_first]": 100, "jax_gemv[a][in_out]": 100, "torch_gemv[b][in_out]": 300})
  assert streams == {100: {"bytes_per_cpu_s": 15.0, "side": "jax_gemv[a][weights_first]"},
                     200: {"bytes_per_cpu_s": 20.0, "side": "read[200]"}}


def test_tpu_plan_counts_the_papers_parameters_and_tokens():
  """benchmarks/tpu_plan.py against the Gemma paper's Table 1 (embedding + non-embedding
  parameters, norms included) and its token counts (3T for 2B, 6T for 7B), read from the gins."""
  from benchmarks import tpu_plan

  result = tpu_plan.main(["--mfu", "0.5", "--result", "none"])
  paper = {"gemma_2b": (524_550_144 + 1_981_884_416, 18, 2048, 3e12),
           "gemma_7b": (786_825_216 + 7_751_248_896, 28, 3072, 6e12)}
  for name, (params, layers, width, tokens) in paper.items():
    run = result["runs"][name]
    assert run["matmul_params"] + (2 * layers + 1) * width == params  # + the RMSNorm scales.
    assert run["train_tokens"] == pytest.approx(tokens, rel=0.01)
    assert run["at_assumed_mfu"][0]["step_s"] == pytest.approx(2 * run["step_s_at_full_mfu"])


def test_every_ratio_the_model_docs_quote_is_in_a_committed_result():
  """docs/model_benchmarks.md quotes per-pair medians in bold; each must be the CPU-time median
  of some committed result file (the docs quote only committed numbers)."""
  import glob
  import re

  medians = set()
  for path in glob.glob(os.path.join(REPO, "benchmarks", "results", "*.json")):
    for ratio in json.load(open(path)).get("ratios", {}).values():
      medians.add(f"{ratio['cpu']['median']:.2f}")
  doc = open(os.path.join(REPO, "docs", "model_benchmarks.md")).read()
  quoted = re.findall(r"/ \*\*([0-9.]+)\*\* /", doc)
  assert len(quoted) >= 10
  assert sorted(set(quoted) - medians) == []
