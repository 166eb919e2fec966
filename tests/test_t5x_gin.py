"""gin/t5x/*.gin and model/t5x_adapter.py, checked without t5x (it is not on PyPI).

Stand-ins named exactly as t5x's symbols (t5x.models.DecoderOnlyModel, t5x.adafactor.Adafactor,
t5x.utils.DatasetConfig, ...) are put in sys.modules so gin's dynamic registration can import
them; each takes the keyword arguments the real one takes for what our files and t5x's
runs/pretrain.gin bind, so a misspelt binding fails here as it would under t5x. A stand-in for
t5x/configs/runs/pretrain.gin (our own minimal file with the macros and bindings the real one
has that ours rely on) is written to a temporary search path. What is NOT checked here: t5x's
own code (its trainer, partitioner, checkpointing) running our module; see docs/t5x.md.
"""

import sys
import types
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import partitioning as flax_partitioning

from model.config import get_config
from model import models as gemma_models
from model.t5x_adapter import GemmaT5xAdapter

REPO = Path(__file__).resolve().parents[1]

PRETRAIN_STANDIN = """
from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import gin_utils
from t5x import partitioning
from t5x import utils
from t5x import trainer

MIXTURE_OR_TASK_NAME = %gin.REQUIRED
TASK_FEATURE_LENGTHS = %gin.REQUIRED
TRAIN_STEPS = %gin.REQUIRED
MODEL_DIR = %gin.REQUIRED
USE_CACHED_TASKS = True

train_script.train:
  model = %MODEL
  model_dir = %MODEL_DIR
  train_dataset_cfg = @train/utils.DatasetConfig()
  train_eval_dataset_cfg = @train_eval/utils.DatasetConfig()
  infer_eval_dataset_cfg = None
  checkpoint_cfg = @utils.CheckpointConfig()
  partitioner = @partitioning.ModelBasedPjitPartitioner()
  trainer_cls = @trainer.Trainer
  total_steps = %TRAIN_STEPS
  eval_steps = 20
  eval_period = 1000
  summarize_config_fn = @gin_utils.summarize_gin_config

partitioning.ModelBasedPjitPartitioner.num_partitions = 1
train/utils.DatasetConfig:
  mixture_or_task_name = %MIXTURE_OR_TASK_NAME
  task_feature_lengths = %TASK_FEATURE_LENGTHS
  split = 'train'
  batch_size = 128
  use_cached = %USE_CACHED_TASKS
  pack = True
train_eval/utils.DatasetConfig:
  mixture_or_task_name = %MIXTURE_OR_TASK_NAME
  task_feature_lengths = %TASK_FEATURE_LENGTHS
  split = 'validation'
  batch_size = 128
  pack = True
utils.CheckpointConfig:
  save = @utils.SaveCheckpointConfig()
utils.SaveCheckpointConfig.period = 1000
trainer.Trainer.num_microbatches = None
"""


class _Recorder:
  """Keeps the keyword arguments it was built with."""

  def __init__(self, **kwargs):
    self.kwargs = kwargs


# Stand-ins with the real keyword names (t5x/models.py, adafactor.py, utils.py, trainer.py, ...).
class DecoderOnlyModel(_Recorder):
  def __init__(self, module, vocabulary, optimizer_def, decode_fn=None,
               inputs_bidirectional_attention=False, feature_converter_cls=None,
               label_smoothing=0.0, z_loss=0.0, loss_normalizing_factor=None):
    super().__init__(module=module, vocabulary=vocabulary, optimizer_def=optimizer_def,
                     label_smoothing=label_smoothing, z_loss=z_loss,
                     loss_normalizing_factor=loss_normalizing_factor,
                     inputs_bidirectional_attention=inputs_bidirectional_attention)


class Adafactor(_Recorder):
  def __init__(self, learning_rate=None, factored=True, multiply_by_parameter_scale=True,
               beta1=None, decay_rate=0.8, step_offset=0, clipping_threshold=1.0,
               weight_decay_rate=None, min_dim_size_to_factor=128, epsilon1=1e-30,
               epsilon2=1e-3, dtype_momentum=jnp.float32, factor_map=None,
               logical_factor_rules=None, weight_decay_rate_lr_exponent=None,
               global_norm_clip_threshold=None, max_parameter_scale=None,
               skip_nan_updates=False):
    super().__init__(decay_rate=decay_rate, step_offset=step_offset,
                     logical_factor_rules=logical_factor_rules)


class DatasetConfig(_Recorder):
  def __init__(self, mixture_or_task_name, task_feature_lengths, split, batch_size, shuffle=True,
               seed=None, use_cached=False, pack=False, use_custom_packing_ops=False,
               module=None, use_memory_cache=True, trim_output_features=True):
    super().__init__(mixture_or_task_name=mixture_or_task_name,
                     task_feature_lengths=task_feature_lengths, split=split, batch_size=batch_size)


class CheckpointConfig(_Recorder):
  def __init__(self, save=None, restore=None):
    super().__init__(save=save, restore=restore)


class SaveCheckpointConfig(_Recorder):
  def __init__(self, dtype="float32", keep=None, period=None, save_dataset=False):
    super().__init__(period=period)


class ModelBasedPjitPartitioner(_Recorder):
  def __init__(self, num_partitions=None, model_parallel_submesh=None, logical_axis_rules=None):
    super().__init__(num_partitions=num_partitions)


class Trainer(_Recorder):
  def __init__(self, model=None, train_state=None, partitioner=None, eval_names=None,
               summary_dir=None, train_state_axes=None, rng=None, learning_rate_fn=None,
               num_microbatches=None, weight_metrics_computer=None):
    super().__init__(num_microbatches=num_microbatches)


def summarize_gin_config(model_dir, summary_writer, step):
  del model_dir, summary_writer, step


def train(*, model, train_dataset_cfg, train_eval_dataset_cfg, infer_eval_dataset_cfg,
          checkpoint_cfg, partitioner, trainer_cls, model_dir, total_steps, eval_steps,
          eval_period, summarize_config_fn, random_seed=None, use_hardware_rng=False):
  """t5x/train.py's `train`, reduced to returning what gin passed it."""
  return dict(model=model, train=train_dataset_cfg, train_eval=train_eval_dataset_cfg,
              infer_eval=infer_eval_dataset_cfg, checkpoint=checkpoint_cfg, model_dir=model_dir,
              total_steps=total_steps, eval_steps=eval_steps, eval_period=eval_period)


VOCAB_CALLS = []


def gemma_vocabulary(data_dir):
  """Stands in for model.t5x_adapter.gemma_vocabulary, which reads a tokenized DATA_DIR."""
  VOCAB_CALLS.append(data_dir)
  return f"vocabulary of {data_dir}"


@pytest.fixture
def t5x_standins(monkeypatch, tmp_path):
  """Fake `t5x.*` modules, `__main__.train`, a stand-in runs/pretrain.gin and a recorded
  vocabulary function (the real one reads a tokenized DATA_DIR)."""
  package = types.ModuleType("t5x")
  package.__path__ = []
  members = {
      "models": {"DecoderOnlyModel": DecoderOnlyModel},
      "adafactor": {"Adafactor": Adafactor},
      "utils": {"DatasetConfig": DatasetConfig, "CheckpointConfig": CheckpointConfig,
                "SaveCheckpointConfig": SaveCheckpointConfig},
      "partitioning": {"ModelBasedPjitPartitioner": ModelBasedPjitPartitioner},
      "trainer": {"Trainer": Trainer},
      "gin_utils": {"summarize_gin_config": summarize_gin_config},
  }
  for name, attrs in members.items():
    module = types.ModuleType(f"t5x.{name}")
    for attr, value in attrs.items():
      value.__module__ = f"t5x.{name}"
      setattr(module, attr, value)
    setattr(package, name, module)
    monkeypatch.setitem(sys.modules, f"t5x.{name}", module)
  monkeypatch.setitem(sys.modules, "t5x", package)
  monkeypatch.setattr(sys.modules["__main__"], "train", train, raising=False)

  from model import t5x_adapter
  VOCAB_CALLS.clear()
  monkeypatch.setattr(t5x_adapter, "gemma_vocabulary", gemma_vocabulary)

  runs = tmp_path / "t5x" / "configs" / "runs"
  runs.mkdir(parents=True)
  (runs / "pretrain.gin").write_text(PRETRAIN_STANDIN)
  gin.clear_config(clear_constants=True)
  for path in (tmp_path, REPO / "gin"):
    gin.add_config_file_search_path(str(path))
  registered_before = {selector for selector, _ in gin.config._REGISTRY.items()}
  yield VOCAB_CALLS
  gin.clear_config(clear_constants=True)
  # Dynamic registration left the stand-ins (e.g. `train_script.train`) in gin's global registry;
  # remove them, or `train.model` in our own gin files becomes ambiguous for later tests.
  for selector, _ in list(gin.config._REGISTRY.items()):
    if selector not in registered_before:
      configurable = gin.config._REGISTRY.pop(selector)
      gin.config._INVERSE_REGISTRY.pop(configurable.wrapped, None)


def test_pretrain_gemma_small_gin_builds_the_run(t5x_standins):
  gin.parse_config_files_and_bindings(
      ["t5x/pretrain_gemma_small.gin"], ["MODEL_DIR = '/tmp/run'", "DATA_DIR = '/data/demo'"])
  run = gin.get_configurable(train)()  # As t5x.train.main calls it.
  model = run["model"]
  assert isinstance(model, DecoderOnlyModel)
  module = model.kwargs["module"]
  assert isinstance(module, GemmaT5xAdapter)
  assert module.config == get_config("small", dtype="float32")
  assert model.kwargs["vocabulary"] == "vocabulary of /data/demo" and t5x_standins == ["/data/demo"]
  assert model.kwargs["z_loss"] == 1e-4 and model.kwargs["label_smoothing"] == 0.0
  assert model.kwargs["optimizer_def"].kwargs["logical_factor_rules"] is None
  assert run["infer_eval"] is None  # The adapter has no t5x cached decoding.
  assert run["train"].kwargs["mixture_or_task_name"] == "gf_mixture"
  assert run["train"].kwargs["task_feature_lengths"] == {"targets": 128}
  assert run["train"].kwargs["batch_size"] == 8 and run["train_eval"].kwargs["batch_size"] == 8
  assert run["train_eval"].kwargs["split"] == "validation"
  assert (run["total_steps"], run["eval_period"], run["model_dir"]) == (300, 100, "/tmp/run")
  assert run["checkpoint"].kwargs["save"].kwargs["period"] == 100


def test_gemma_2b_gin_sets_the_paper_model_and_memory_knobs(t5x_standins):
  gin.parse_config_files_and_bindings(["t5x/gemma_2b.gin"], ["DATA_DIR = '/data/full'"])
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  config = model.kwargs["module"].config
  assert config == get_config("gemma_2b", dtype="bfloat16", remat_policy="full", scan_layers=True,
                              attention_chunk_size=1024)
  assert config.num_non_embedding_params() == 1_981_884_416


def test_a_misspelt_binding_fails_as_under_t5x(t5x_standins):
  with pytest.raises(ValueError, match="decay_rat"):
    gin.parse_config_files_and_bindings(["t5x/gemma_small.gin"], ["adafactor.Adafactor.decay_rat = 0.9"])


# ---- the adapter computes our model's logits ----

@pytest.fixture(scope="module")
def tiny():
  config = get_config("tiny", dtype="float32")
  adapter = GemmaT5xAdapter(config)
  tokens = jnp.ones((2, 8), jnp.int32)
  variables = adapter.init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False)
  return config, adapter, variables


def test_adapter_emits_plain_params_and_t5x_params_axes(tiny):
  config, _, variables = tiny
  ours = gemma_models.DecoderOnlyModel(config)
  params = variables["params"]["decoder"]
  assert jax.tree.structure(params) == jax.tree.structure(ours.abstract_params())
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
  axes = flax_partitioning.get_axis_names(variables["params_axes"])["decoder"]
  assert axes == ours.logical_axes()  # Same logical names as our trainer shards by.


def test_adapter_logits_equal_the_transformer_packed_and_unpacked(tiny):
  config, adapter, variables = tiny
  params = variables["params"]
  ours = gemma_models.DecoderOnlyModel(config)
  rng = np.random.default_rng(0)
  targets = rng.integers(1, config.vocab_size, (2, 12)).astype(np.int32)
  targets[1, 9:] = 0  # Right padding.
  inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
  packed = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_segment_ids": np.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], np.int32),
            "decoder_positions": np.array([list(range(5)) + list(range(7)),
                                           list(range(9)) + [0] * 3], np.int32)}
  got = adapter.apply({"params": params}, inputs, targets,
                      decoder_segment_ids=packed["decoder_segment_ids"],
                      decoder_positions=packed["decoder_positions"], enable_dropout=False, decode=False)
  np.testing.assert_allclose(got, ours.logits(params["decoder"], packed), rtol=1e-6, atol=1e-6)
  unpacked = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets}
  got = adapter.apply({"params": params}, inputs, targets, enable_dropout=True)
  want = ours.logits(params["decoder"], unpacked)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # Different segments must give different logits than one segment (the mask is really used).
  assert not np.allclose(got[0, 5:], adapter.apply(
      {"params": params}, inputs, targets, decoder_segment_ids=packed["decoder_segment_ids"],
      decoder_positions=packed["decoder_positions"])[0, 5:], atol=1e-3)


def test_adapter_refuses_t5x_cached_decoding_and_prefix_lm(tiny):
  _, adapter, variables = tiny
  tokens = jnp.ones((2, 8), jnp.int32)
  with pytest.raises(ValueError, match="does not implement t5x's cached decoding"):
    adapter.apply({"params": variables["params"]}, tokens, tokens, decode=True, mutable=["cache"])
  with pytest.raises(ValueError, match="does not implement t5x's cached decoding"):
    adapter.apply({"params": variables["params"]}, tokens, tokens, prefill=True,
                  prefill_lengths=jnp.array([3, 4]))
  with pytest.raises(ValueError, match="prefix-LM"):
    adapter.apply({"params": variables["params"]}, tokens, tokens, decoder_causal_attention=tokens)
