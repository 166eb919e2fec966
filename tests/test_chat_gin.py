"""Every post-training gin file parses, with its configurables bound (no compute)."""

import gin
import pytest

from model import gin_utils

FILES = ["sft", "reward_model", "rlhf"] + [f"{k}_{s}_v5e" for k in ("sft", "reward_model", "rlhf") for s in ("2b", "7b")]
ENTRY = {"sft": "train.model_dir", "reward_model": "train_reward_model.model_dir", "rlhf": "train_rlhf.model_dir"}


@pytest.mark.parametrize("name", FILES)
def test_gin_file_parses(name):
  from model import checkpoints, optimizers, partitioning, reward_model, rlhf, train  # noqa: F401
  gin.clear_config()
  try:
    gin_utils.parse_gin([f"gin/runs/{name}.gin"], ["MODEL_DIR = '/tmp/x'"])
    kind = next(k for k in ("reward_model", "rlhf", "sft") if name.startswith(k))
    assert gin.query_parameter(ENTRY[kind]) is not None
    if "2b" in name or "7b" in name:
      assert gin.query_parameter("build_model.config_name") == ("gemma_2b" if "2b" in name else "gemma_7b")
  finally:
    gin.clear_config()
