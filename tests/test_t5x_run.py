"""gin/t5x/ under real t5x: `t5x.train`, resume, `t5x.infer` (score and predict), `t5x.eval`.

Every t5x command runs in a subprocess (t5x keeps absl flags and gin's global config), on a
tiny tokenized data directory made here by the project's own tokenizer and tokenize jobs. One
t5x training run (module fixture) is shared by the tests. Expected numbers are computed here
independently: scores and greedy continuations with our own model (model.models, full forward
passes, no cache) on the t5x checkpoint's parameters, read with orbax.
"""

import glob
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Real t5x programs, minutes each (`make test-slow`).

t5x = pytest.importorskip("t5x", reason="real t5x (docs/t5x.md) is not installed")

from pipelines import tokenize  # noqa: E402
from model import t5x_convert  # noqa: E402
from model.config import get_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from tasks import special_tokens  # noqa: E402
from test_tasks import docs, options, train, write_stage_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = 10
SMALL = get_config("small", dtype="float32")  # What gin/t5x/gemma_small.gin builds.


def _t5x(script, gin_files, bindings, log_path, timeout=600):
  """Runs `python -m t5x.<script>` with our gin files; returns its log (stdout+stderr)."""
  args = [sys.executable, "-m", f"t5x.{script}", f"--gin_search_paths={REPO / 'gin'}"]
  args += [f"--gin_file={f}" for f in gin_files] + [f"--gin.{b}" for b in bindings]
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  with open(log_path, "w") as log:
    proc = subprocess.run(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
  text = Path(log_path).read_text()
  assert proc.returncode == 0, text[-4000:]
  return text


def _scalars(event_dir, tag):
  """{step: value} of a scalar in a TensorBoard event directory (what t5x's summary writers write)."""
  import tensorflow as tf
  out = {}
  for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
  return out


def _train_bindings(data_dir, model_dir):
  return [f"MODEL_DIR='{model_dir}'", f"DATA_DIR='{data_dir}'", f"TRAIN_STEPS={STEPS}",
          "train.eval_period=5", "train.eval_steps=2", "utils.SaveCheckpointConfig.period=5"]


def _eval_bindings(data_dir, checkpoint, num_examples=100):
  return [f"DATA_DIR='{data_dir}'", f"CHECKPOINT_PATH='{checkpoint}'",
          f"t5x_adapter.gemma_vocabulary.eval_examples={num_examples}"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("t5x_data")
  input_dir = write_stage_dir(root / "dedupe", docs(), num_shards=2)
  train(input_dir, root / "tok")
  tokenize.tokenize(input_dir, str(root / "tok" / "tokenizer.model"), str(root / "data"),
                    validation_fraction=0.25, num_shards=2, options=options())
  return root / "data"


@pytest.fixture(scope="module")
def t5x_run(data_dir, tmp_path_factory):
  """`t5x.train` on gin/t5x/pretrain_gemma_small.gin for STEPS steps (eval + checkpoint every 5)."""
  root = tmp_path_factory.mktemp("t5x_run")
  model_dir = root / "model"
  _t5x("train", ["t5x/pretrain_gemma_small.gin"], _train_bindings(data_dir, model_dir), root / "train.log")
  return model_dir


@pytest.fixture(scope="module")
def params(t5x_run):
  return t5x_convert.read_t5x_params(str(t5x_run / f"checkpoint_{STEPS}"), SMALL)


def test_t5x_train_loss_falls_writes_checkpoints_and_runs_train_eval(t5x_run):
  assert sorted(p.name for p in t5x_run.glob("checkpoint_*")) == ["checkpoint_0", "checkpoint_10", "checkpoint_5"]
  losses = _scalars(t5x_run / "train", "cross_ent_loss_per_all_target_tokens")
  assert sorted(losses) == [5, 10]
  # A fresh model is near-uniform over the vocab: the loss starts near log(V) and must fall.
  assert losses[10] < losses[5] < math.log(SMALL.vocab_size)
  for task in ("gf_mixture", "gf_docs", "gf_web"):
    eval_losses = _scalars(t5x_run / "training_eval" / task, "loss_per_nonpadding_target_token")
    assert sorted(eval_losses) == [5, 10] and eval_losses[10] < eval_losses[5], task


def test_t5x_train_resumes_from_its_checkpoint_exactly(t5x_run, data_dir, tmp_path, params):
  model_dir = tmp_path / "model"
  shutil.copytree(t5x_run, model_dir, ignore=shutil.ignore_patterns("checkpoint_10", "train", "training_eval"))
  log = _t5x("train", ["t5x/pretrain_gemma_small.gin"], _train_bindings(data_dir, model_dir), tmp_path / "resume.log")
  assert "Restoring from checkpoint" in log or "checkpoint_5" in log
  assert sorted(_scalars(model_dir / "train", "cross_ent_loss_per_all_target_tokens")) == [10]
  resumed = t5x_convert.read_t5x_params(str(model_dir / f"checkpoint_{STEPS}"), SMALL)
  # Same data position (dataset checkpointed, fixed seed) and same state: the same step-10 params.
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _read_jsonl(pattern):
  files = glob.glob(pattern)
  assert len(files) == 1, files
  with open(files[0]) as f:
    return [json.loads(line) for line in f]


def _unpadded(ids):
  """Token ids without the trailing 0s t5x's output adds (batch padding)."""
  ids = list(ids)
  while ids and ids[-1] == 0:
    ids.pop()
  return ids


def _special_ids(data_dir) -> special_tokens.SpecialTokens:
  return special_tokens.special_tokens(os.path.join(str(data_dir), tokenize.TOKENIZER_FILE))


def _our_scores(params, rows, bos_id):
  """log p(targets | BOS, inputs) with our model on hand-built PrefixLM batches (t5x's feature
  converter shifts in the vocabulary's BOS: gin/t5x/gemma.gin)."""
  model = DecoderOnlyModel(SMALL)
  rows = [(_unpadded(r["inputs"]["inputs"]), _unpadded(r["inputs"]["targets"])) for r in rows]
  width = max(len(prompt) + len(answer) for prompt, answer in rows)
  inputs = np.zeros((len(rows), width), np.int32)
  targets = np.zeros((len(rows), width), np.int32)
  weights = np.zeros((len(rows), width), np.float32)
  for i, (prompt, answer) in enumerate(rows):
    tokens = prompt + answer
    targets[i, :len(tokens)] = tokens
    inputs[i, 0] = bos_id
    inputs[i, 1:len(tokens)] = tokens[:-1]
    weights[i, len(prompt):len(tokens)] = 1.0
  batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets, "decoder_loss_weights": weights}
  return np.asarray(jax.jit(model.score_batch)(params, batch))


@pytest.fixture(scope="module")
def scored(t5x_run, data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("t5x_score")
  _t5x("infer", ["t5x/infer_gemma_small.gin"],
       _eval_bindings(data_dir, t5x_run / f"checkpoint_{STEPS}") + [f"INFER_OUTPUT_DIR='{out}'", "infer.mode='score'"],
       out / "infer.log")
  return _read_jsonl(str(out / "gf_eval_next_line-score.jsonl-00000-of-00001"))


def test_t5x_infer_score_mode_equals_our_scores(scored, params, data_dir):
  assert len(scored) >= 8 and len(scored) % 4 == 0
  want = _our_scores(params, scored, _special_ids(data_dir).bos)
  np.testing.assert_allclose([r["score"] for r in scored], want, rtol=1e-4, atol=1e-3)


def test_t5x_eval_reports_the_tasks_metrics(t5x_run, data_dir, tmp_path, scored):
  _t5x("eval", ["t5x/eval_gemma_small.gin"],
       _eval_bindings(data_dir, t5x_run / f"checkpoint_{STEPS}") + [f"EVAL_OUTPUT_DIR='{tmp_path}'"],
       tmp_path / "eval.log")
  metrics = _read_jsonl(str(tmp_path / "inference_eval" / "gf_eval_next_line-metrics.jsonl"))[-1]
  # Accuracy from the scores of t5x.infer, ranked here: the example's best-scoring choice.
  by_example = {}
  for row in scored:
    example, choice = row["inputs"]["idx"]
    by_example.setdefault(example, []).append((row["score"], choice, row["inputs"]["is_correct"]))
  right = [max(choices)[2] for choices in by_example.values()]
  assert metrics["step"] == STEPS
  assert metrics["num_examples"] == len(by_example)
  assert metrics["accuracy"] == pytest.approx(np.mean(right))


def _greedy_reference(params, prompt, num_tokens, eos_id, bos_id):
  """Greedy continuation by full forward passes of our model (no cache) on [BOS] + prompt."""
  model = DecoderOnlyModel(SMALL)
  width = 1 + len(prompt) + num_tokens
  logits_fn = jax.jit(model.logits)
  tokens = [bos_id] + list(prompt)
  out = []
  for _ in range(num_tokens):
    row = np.zeros((1, width), np.int32)
    row[0, :len(tokens)] = tokens
    real = (np.arange(width) < len(tokens)).astype(np.int32)[None]
    logits = logits_fn(params, {"decoder_input_tokens": row, "decoder_target_tokens": real})
    token = int(jnp.argmax(logits[0, len(tokens) - 1]))
    out.append(token)
    if token == eos_id:
      break
    tokens.append(token)
  return out


def test_t5x_infer_predict_mode_decodes_as_our_model(data_dir, tmp_path):
  """Greedy `t5x.infer` predict mode on a checkpoint written by model.t5x_convert.ours_to_t5x.

  The weights are random with random norm scales (a 10-step model predicts one token
  everywhere), so continuations depend on the prompt and a cache error would show.
  """
  params = DecoderOnlyModel(SMALL).init_params(jax.random.PRNGKey(1))
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: np.asarray(x) + rng.normal(0, 1.0, x.shape).astype(np.float32)
      if "scale" in jax.tree_util.keystr(path) else np.asarray(x), params)
  checkpoint = t5x_convert.ours_to_t5x(params, SMALL, str(tmp_path / "t5x"), 0)
  _t5x("infer", ["t5x/infer_gemma_small.gin"],
       _eval_bindings(data_dir, checkpoint, num_examples=3) + [
           f"INFER_OUTPUT_DIR='{tmp_path}'", "infer.mode='predict'", "decoding.temperature_sample.temperature=0.0"],
       tmp_path / "infer.log")
  rows = _read_jsonl(str(tmp_path / "gf_eval_next_line-predict.jsonl-00000-of-00001"))
  assert len(rows) == 12
  ids, num_tokens = _special_ids(data_dir), 12
  eos = ids.eos
  wants = []
  for row in rows[::4]:  # The 4 choices of an example share the prompt.
    got = [t for t in row["prediction_tokens"] if t != 0][:num_tokens]
    if eos in got:
      got = got[:got.index(eos) + 1]
    wants.append(_greedy_reference(params, _unpadded(row["inputs"]["inputs"]), num_tokens, eos, ids.bos))
    assert got == wants[-1]
  assert len({tuple(w) for w in wants}) == len(wants) and len(set(sum(wants, []))) > 3


def test_gemma_2b_t5x_train_step_lowers_on_a_simulated_8_device_mesh(data_dir):
  """t5x's partitioner and trainer over gin/t5x/gemma_2b.gin, abstractly (nothing allocated)."""
  script = f"""
import gin, jax, jax.numpy as jnp
from t5x import gin_utils, partitioning, trainer as trainer_lib, utils
gin_utils.parse_gin_flags(['{REPO / 'gin'}'], ['t5x/gemma_2b.gin'], ["DATA_DIR = '{data_dir}'"])
model = gin.query_parameter('%MODEL').scoped_configurable_fn()
assert model.module.config.num_layers == 18 and model.module.config.scan_layers
partitioner = partitioning.PjitPartitioner(num_partitions=4)
shapes = {{'decoder_input_tokens': (8, 512), 'decoder_target_tokens': (8, 512),
          'decoder_loss_weights': (8, 512)}}
types = {{k: jnp.int32 for k in shapes}}
types['decoder_loss_weights'] = jnp.float32
init = utils.TrainStateInitializer(model.optimizer_def, model.get_initial_variables, shapes, partitioner, types)
state = init.global_train_state_shape
num_params = sum(x.size for x in jax.tree.leaves(state.params))
trainer = trainer_lib.Trainer(model, state, partitioner, eval_names=[], summary_dir=None,
                              train_state_axes=init.train_state_axes, rng=jax.random.PRNGKey(0),
                              learning_rate_fn=lambda step: 1e-3, num_microbatches=None)
batch = {{k: jax.ShapeDtypeStruct(v, types[k]) for k, v in shapes.items()}}
lowered = trainer._partitioned_train_step.lower(state, batch)
print('PARAMS', num_params, 'DEVICES', partitioner.mesh.devices.size, 'LOWERED', len(lowered.as_text()) > 0)
"""
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("PARAMS")][-1].split()
  config = get_config("gemma_2b")
  assert int(line[1]) == config.num_non_embedding_params() + config.vocab_size * config.embed_dim
  assert line[3] == "8" and line[-1] == "True"  # The train step is laid out over all 8 devices.


def test_t5x_checkpoint_converts_to_ours_to_hf_and_back_with_logits_unchanged(t5x_run, params, tmp_path):
  import torch
  transformers = pytest.importorskip("transformers")
  from model import checkpoints, hf_convert
  from model.t5x_adapter import GemmaT5xAdapter
  model = DecoderOnlyModel(SMALL)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 400, (2, 16)).astype(np.int32)
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.ones_like(tokens)}
  want = np.asarray(model.logits(params, batch))
  adapter_logits = GemmaT5xAdapter(SMALL).apply({"params": {"decoder": params}}, tokens, np.ones_like(tokens),
                                                enable_dropout=False)
  np.testing.assert_array_equal(adapter_logits, want)  # The t5x module computes our model.

  step_dir = t5x_convert.t5x_to_ours(str(t5x_run / f"checkpoint_{STEPS}"), SMALL, str(tmp_path / "ours"))
  assert step_dir == str(tmp_path / "ours" / "checkpoints" / str(STEPS))
  ours = checkpoints.load_params(checkpoints.resolve_checkpoint_path(None, str(tmp_path / "ours")),
                                 model.abstract_params())
  np.testing.assert_array_equal(model.logits(ours, batch), want)

  hf_convert.export_hf(jax.tree.map(np.asarray, ours), SMALL, str(tmp_path / "hf"))
  hf_model = transformers.GemmaForCausalLM.from_pretrained(str(tmp_path / "hf"), attn_implementation="eager").eval()
  with torch.no_grad():
    hf_logits = hf_model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(hf_logits, want, rtol=1e-4, atol=1e-4)

  config, from_hf = hf_convert.import_hf(str(tmp_path / "hf"), dtype="float32")
  assert (config.num_layers, config.embed_dim, config.vocab_size) == (SMALL.num_layers, SMALL.embed_dim,
                                                                      SMALL.vocab_size)
  t5x_dir = t5x_convert.ours_to_t5x(from_hf, SMALL, str(tmp_path / "t5x"), STEPS)
  back = t5x_convert.read_t5x_params(t5x_dir, SMALL)
  np.testing.assert_array_equal(model.logits(back, batch), want)
