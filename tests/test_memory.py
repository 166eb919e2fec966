"""Memory knobs of the model (remat, scanned layers, chunked attention, chunked loss) and whether
the v5e pretraining gin files fit a 16 GiB chip.

The knobs must not change what the model computes: every test below compares against the plain
configuration in float32. The fit tests compile the real train step (model.train.Trainer: loss,
gradients, Adafactor update, FSDP shardings) for the configuration a gin file specifies against
abstract arguments (nothing is allocated) on simulated CPU devices, in a subprocess because
XLA_FLAGS only apply before jax initialises. XLA's CPU memory analysis estimates TPU memory; it
overstates bf16 activations (the CPU backend computes bf16 matmuls in float32).

Run by hand to print the analysis of any gin file:
  PYTHONPATH=. python tests/test_memory.py gin/gemma_2b_pretrain_v5e.gin 16 512 ["GIN BINDING" ...]
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import decoding
from model.config import REMAT_POLICIES, get_config
from model.models import DecoderOnlyModel, compute_weighted_cross_entropy
from model.modules import dot_product_attention, map_chunks
from model.transformer import attention_mask

REPO = Path(__file__).resolve().parents[1]
V5E_HBM_BYTES = 16 * 2**30

# Compiles the train step a gin file specifies; argv: gin_file, simulated devices, chips of the
# real run, extra gin bindings. The batch is the real run's per-data-replica batch on each replica.
COMPILE_GIN_STEP = r"""
import json, os, sys, time
gin_file, num_devices, num_chips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
import gin, jax, jax.numpy as jnp
from model import checkpoints, data, gin_utils, train  # noqa: F401  (configurables of the gin files)
from model.partitioning import Partitioner

gin_utils.parse_gin([gin_file], ["Partitioner.init_distributed = False", "MODEL_DIR = '/unused'",
                                 *sys.argv[4:]])
model = gin.query_parameter("train.model").scoped_configurable_fn()
optimizer = gin.query_parameter("train.optimizer").scoped_configurable_fn()
partitioner = Partitioner()
global_batch = gin.query_parameter("%BATCH_SIZE")
seq_len = gin.query_parameter("%TASK_FEATURE_LENGTHS")["targets"]
data_replicas = num_chips // partitioner.model_size
per_replica = global_batch // data_replicas
trainer = train.Trainer(model, optimizer, partitioner,
                        num_microbatches=gin.query_parameter("%NUM_MICROBATCHES"))
state = train.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated),
                         params=trainer.abstract_train_params(),
                         opt_state=trainer.abstract_train_opt_state())
shape = (per_replica * partitioner.data_size, seq_len)
batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=partitioner.batch_sharding)
         for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                   "decoder_segment_ids", "decoder_positions")}
start = time.time()
with partitioner.activate():
  compiled = trainer._train_step.lower(state, batch).compile()
memory = compiled.memory_analysis()
report = {f: int(getattr(memory, f)) for f in (
    "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
    "generated_code_size_in_bytes")}
# The state is donated: its outputs reuse the argument buffers (alias), the rest is new.
report["total_bytes"] = (report["argument_size_in_bytes"] + report["temp_size_in_bytes"]
                         + report["output_size_in_bytes"] - report["alias_size_in_bytes"]
                         + report["generated_code_size_in_bytes"])
report.update(compile_seconds=round(time.time() - start, 1), mesh=dict(partitioner.mesh.shape),
              per_replica_batch=per_replica, seq_len=seq_len,
              num_microbatches=trainer.num_microbatches,
              remat_policy=model.config.remat_policy, scan_layers=model.config.scan_layers,
              attention_chunk_size=model.config.attention_chunk_size,
              loss_chunk_size=model.config.loss_chunk_size,
              num_params=sum(x.size for x in jax.tree.leaves(trainer.abstract_params)))
print("REPORT" + json.dumps(report))
"""


def compile_gin_step(gin_file: str, num_devices: int, num_chips: int, *bindings: str) -> dict:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", COMPILE_GIN_STEP, gin_file, str(num_devices),
                         str(num_chips), *bindings],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("REPORT"))
  return json.loads(line[len("REPORT"):])


# ---- the knobs compute the same numbers ----

def _packed_batch(length=40, seed=0):
  """Two rows: two packed documents; one document then padding (segment 0)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 256, (2, length)).astype(np.int32)
  segments = np.ones((2, length), np.int32)
  segments[0, 15:] = 2
  segments[1, 30:] = 0
  positions = np.stack([np.r_[np.arange(15), np.arange(length - 15)], np.arange(length)]).astype(np.int32)
  targets = tokens * (segments > 0)
  return {"decoder_input_tokens": tokens, "decoder_target_tokens": targets,
          "decoder_segment_ids": segments, "decoder_positions": positions,
          "decoder_loss_weights": (segments > 0).astype(np.float32)}


@pytest.mark.parametrize("chunk_size", [8, 13, 64])  # Even blocks, a shorter tail, one block.
def test_chunked_attention_equals_one_block(chunk_size):
  """Query blocks (incl. a shorter last block) give the plain einsum attention and its gradient,
  with packing segments, causal masking and padding rows."""
  batch = _packed_batch()
  segments = jnp.asarray(batch["decoder_segment_ids"])
  slots = jnp.arange(40)
  mask = attention_mask(segments, segments, slots, slots)
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32)
             for s in [(2, 40, 2, 3, 16), (2, 40, 2, 16), (2, 40, 2, 16)])
  q = q * 16**-0.5  # Scaled like the model's queries.

  def plain(q, k, v):
    return dot_product_attention(q, k, v, mask)

  def chunked(q, k, v):
    return map_chunks(lambda qc, mc: dot_product_attention(qc, k, v, mc), (q, mask), chunk_size)

  np.testing.assert_allclose(jax.jit(chunked)(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
  weights = jnp.asarray(rng.normal(size=(2, 40, 2, 3, 16)), jnp.float32)
  grads = [jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=(0, 1, 2)))(q, k, v)
           for f in (plain, chunked)]
  for got, want in zip(grads[1], grads[0]):  # Gradients are O(1): 1e-5 absolute.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# Every knob and every remat policy at least once; 40 positions = 2 blocks of 16 + a tail of 8.
KNOBS = [
    dict(remat_policy="full"),
    dict(remat_policy="dots_saveable", scan_layers=True),
    dict(remat_policy="dots_with_no_batch_dims_saveable", attention_chunk_size=16),
    dict(scan_layers=True, loss_chunk_size=16),
    dict(remat_policy="full", scan_layers=True, attention_chunk_size=8, loss_chunk_size=8),
]


def _everything(config, params, batch):
  """(loss, metrics), grads, logits and scores of one model, in one compiled function."""
  model = DecoderOnlyModel(config, z_loss=1e-3, label_smoothing=0.1)

  def run(params, batch):
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch)
    return dict(loss=loss, metrics=metrics, grads=grads, logits=model.logits(params, batch),
                scores=model.score_batch(params, batch))
  return jax.jit(run)(params, batch)


@pytest.fixture(scope="module")
def reference():
  config = get_config("tiny", dtype="float32")
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(0))
  batch = _packed_batch()
  return params, batch, _everything(config, params, batch)


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_memory_knobs_keep_logits_loss_scores_and_gradients(reference, knobs):
  params, batch, want = reference
  got = _everything(get_config("tiny", dtype="float32", **knobs), params, batch)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  for name, value in want["metrics"].items():
    np.testing.assert_allclose(got["metrics"][name], value, rtol=1e-5, atol=1e-7, err_msg=name)
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want["grads"]))
  for path, grad in jax.tree_util.tree_leaves_with_path(got["grads"]):
    np.testing.assert_allclose(grad, flat_want[path], rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5)


def test_loss_equals_t5x_one_hot_cross_entropy():
  """The closed-form soft-target sum equals t5x's one-hot formulation (label smoothing, z-loss)."""
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 7, 50)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(1, 50, (2, 7)), jnp.int32)
  weights = jnp.asarray(rng.integers(0, 2, (2, 7)), jnp.float32)
  smoothing, z_loss = 0.1, 1e-3
  confidence, low = 1 - smoothing, smoothing / 49
  soft = jax.nn.one_hot(targets, 50) * (confidence - low) + low
  log_z = jax.nn.logsumexp(logits, axis=-1)
  constant = -(confidence * np.log(confidence) + 49 * low * np.log(low + 1e-20))
  per_token = -jnp.sum(soft * (logits - log_z[..., None]), axis=-1) - constant + z_loss * log_z**2
  loss, z_total, weight_sum = compute_weighted_cross_entropy(logits, targets, weights, smoothing, z_loss)
  np.testing.assert_allclose(loss, jnp.sum(per_token * weights), rtol=1e-5)
  np.testing.assert_allclose(z_total, jnp.sum(z_loss * log_z**2 * weights), rtol=1e-5)
  assert float(weight_sum) == float(jnp.sum(weights))


def test_decoding_with_chunked_attention_and_scan_gives_the_same_tokens():
  """A prefill longer than the attention block, then cached steps (scan is training-only)."""
  base = get_config("tiny", dtype="float32")
  knobs = get_config("tiny", dtype="float32", attention_chunk_size=4, scan_layers=True,
                     remat_policy="full")
  params = DecoderOnlyModel(base).init_params(jax.random.PRNGKey(3))
  prompts = decoding.pad_prompts([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22]], bos_id=2)
  want = decoding.generate(base, params, prompts, jax.random.PRNGKey(0), max_decode_len=6,
                           sampler=decoding.Sampler("greedy"), stop_tokens=())
  got = decoding.generate(knobs, params, prompts, jax.random.PRNGKey(0), max_decode_len=6,
                          sampler=decoding.Sampler("greedy"), stop_tokens=())
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


def test_parameter_layout_is_the_same_with_every_knob():
  """Checkpoints and the HF converter see layer_<i> params whatever the memory settings."""
  base = DecoderOnlyModel(get_config("tiny"))
  knobs = DecoderOnlyModel(get_config("tiny", remat_policy="full", scan_layers=True,
                                      attention_chunk_size=8, loss_chunk_size=8))
  assert jax.tree.structure(knobs.abstract_params()) == jax.tree.structure(base.abstract_params())
  assert jax.tree.map(lambda x: x.shape, knobs.abstract_params()) == \
      jax.tree.map(lambda x: x.shape, base.abstract_params())
  assert knobs.logical_axes() == base.logical_axes()


def test_bad_memory_settings_are_rejected():
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    get_config("tiny", remat_policy="everything")
  with pytest.raises(ValueError, match="attention_chunk_size must be a positive int or None"):
    get_config("tiny", attention_chunk_size=0)
  with pytest.raises(ValueError, match="loss_chunk_size must be a positive int or None"):
    get_config("tiny", loss_chunk_size=1.5)
  with pytest.raises(ValueError, match="scan_layers must be a bool"):
    get_config("tiny", scan_layers="yes")


# ---- the knobs save memory ----

def _compiled_temp_bytes(config, length):
  model = DecoderOnlyModel(config)
  batch = {k: jax.ShapeDtypeStruct((1, length), jnp.int32) for k in (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions")}
  step = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b)[0]))
  return step.lower(model.abstract_params(), batch).compile().memory_analysis().temp_size_in_bytes


def test_knobs_cut_compiled_temporaries():
  """The 'small' model (3 layers) at 1024 tokens on one device: each knob lowers XLA's temps.

  Per layer, attention probabilities are [4, 1024, 1024] and the logits [1024, 4096] float32."""
  temp = {name: _compiled_temp_bytes(get_config("small", num_layers=3, **knobs), 1024)
          for name, knobs in {
              "plain": {},
              "remat+scan": dict(remat_policy="full", scan_layers=True),
              "all": dict(remat_policy="full", scan_layers=True, attention_chunk_size=128,
                          loss_chunk_size=128)}.items()}
  assert temp["remat+scan"] < 0.6 * temp["plain"], temp
  assert temp["all"] < 0.7 * temp["remat+scan"], temp


# ---- the v5e gin files fit 16 GiB per chip ----

def _check_fits(report):
  print(json.dumps(report, indent=1))
  assert report["total_bytes"] < V5E_HBM_BYTES, f"{report['total_bytes'] / 2**30:.2f} GiB > 16 GiB"


@pytest.mark.slow
def test_gemma_2b_v5e_gin_fits_16_gib():
  """gin/gemma_2b_pretrain_v5e.gin: 512 chips, pure data parallel with FSDP, 1 x 8192 tokens per
  chip. 16 simulated devices hold 1/16 of the params and state (the real run 1/512); the
  activations and per-layer gathered weights per device are the real run's."""
  report = compile_gin_step("gin/gemma_2b_pretrain_v5e.gin", 16, 512)
  assert report["mesh"] == {"data": 16, "model": 1} and report["per_replica_batch"] == 1
  assert report["num_params"] == 2_506_434_560
  # FSDP: each device's arguments are ~1/16 of the float32 params (+ small Adafactor factors).
  assert report["argument_size_in_bytes"] < 1.05 * 4 * report["num_params"] / 16
  _check_fits(report)
  # The knobs are what make it fit: without them the temporaries are ~145 GiB.
  assert report["temp_size_in_bytes"] < 12 * 2**30


@pytest.mark.slow
def test_gemma_7b_v5e_gin_fits_16_gib():
  """gin/gemma_7b_pretrain_v5e.gin: 16-way model x 256-way data. A 2 x 16 mesh (32 simulated
  devices) has the real per-chip shards along 'model' and the real 4 sequences per model group;
  its params/state are split 2 ways over 'data' instead of 256, so arguments are overstated."""
  report = compile_gin_step("gin/gemma_7b_pretrain_v5e.gin", 32, 4096)
  assert report["mesh"] == {"data": 2, "model": 16} and report["per_replica_batch"] == 4
  assert report["num_microbatches"] == 2
  _check_fits(report)


if __name__ == "__main__":
  print(json.dumps(compile_gin_step(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]),
                   indent=1))
