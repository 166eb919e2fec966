"""Tests for tasks/: cached Tasks, chunking with BOS/EOS, the token-weighted Mixture, YAML mixtures."""

import collections
import json
import random

import numpy as np
import pytest
import seqio
import sentencepiece as spm

import tasks
from pipelines import common
from pipelines import tokenize
from tasks import mixtures
from tasks import preprocessors
from test_tokenizer import make_text, options, train, write_stage_dir

LONG_ID = "00000000000000dd"


def docs():
  rng = random.Random(3)
  out = []
  for i in range(120):  # Many short web pages.
    out.append({"id": f"{common.stable_hash(f'w{i}'):016x}", "source": "web", "text": make_text(rng, 1, 16)})
  for i in range(20):  # Fewer, longer documentation pages.
    out.append({"id": f"{common.stable_hash(f'd{i}'):016x}", "source": "docs", "text": make_text(rng, 4, 40)})
  out.append({"id": LONG_ID, "source": "docs", "text": "\n".join(make_text(rng, 1, 60) for _ in range(20))})
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tasks")
  input_dir = write_stage_dir(root / "dedupe", docs(), num_shards=2)
  train(input_dir, root / "tok")
  tokenize.tokenize(input_dir, str(root / "tok" / "tokenizer.model"), str(root / "data"),
                    validation_fraction=0.25, num_shards=4, options=options())
  names = tasks.register_data_dir(str(root / "data"))
  return root / "data", names


def doc_tokens(data_dir):
  sp = spm.SentencePieceProcessor(model_file=str(data_dir / "tokenizer.model"))
  return {d["id"]: sp.encode(d["text"]) for d in docs()}


def test_register_is_idempotent_and_records_tiers(data_dir):
  path, names = data_dir
  assert names == ["gf_docs", "gf_web"]
  assert tasks.register_data_dir(str(path)) == names
  assert tasks.TASK_TIERS["gf_docs"] == "high" and tasks.TASK_TIERS["gf_web"] == "standard"
  assert seqio.get_mixture_or_task("gf_docs").cache_dir == str(path / "cache" / "gf_docs")
  vocab = tasks.get_vocabulary(str(path))
  assert (vocab.pad_id, vocab.eos_id, vocab.bos_id, vocab.unk_id) == (0, 1, 2, 3)
  assert seqio.get_mixture_or_task("gf_docs").output_features["targets"].vocabulary is vocab


def test_cached_dataset_chunks_documents_with_bos_and_eos(data_dir):
  path, _ = data_dir
  expected = doc_tokens(path)
  length = 64
  chunks = collections.defaultdict(list)
  for split in ("train", "validation"):
    ds = seqio.get_mixture_or_task("gf_docs").get_dataset(
        sequence_length={"targets": length}, split=split, use_cached=True, shuffle=False)
    for ex in ds.as_numpy_iterator():
      targets = ex["targets"].tolist()
      assert targets[0] == 2 and targets[-1] == 1 and 3 <= len(targets) <= length
      assert 2 not in targets[1:-1] and 1 not in targets[1:-1]
      chunks[ex["id"].decode()].append(targets[1:-1])
  assert len(chunks) == 21
  for doc_id, parts in chunks.items():  # Chunks come in order and nothing is truncated.
    assert sum(parts, []) == expected[doc_id]
  assert len(chunks[LONG_ID]) == -(-len(expected[LONG_ID]) // (length - 2)) > 5
  with pytest.raises(ValueError, match="requires caching"):
    seqio.get_mixture_or_task("gf_docs").get_dataset({"targets": length}, use_cached=False)


def test_max_chunk_tokens_caps_chunks(data_dir):
  path, _ = data_dir
  tasks.register_data_dir(str(path), max_chunk_tokens=10)
  try:
    ds = seqio.get_mixture_or_task("gf_web").get_dataset(
        sequence_length={"targets": 512}, split="train", use_cached=True, shuffle=False)
    lengths = [len(ex["targets"]) for ex in ds.as_numpy_iterator()]
    assert max(lengths) == 12 and min(lengths) >= 3
  finally:
    tasks.register_data_dir(str(path))


def test_split_into_chunks_rejects_impossible_lengths():
  with pytest.raises(ValueError, match="at least one token"):
    preprocessors.chunk_length({"targets": 2}, None)
  assert preprocessors.chunk_length(None, None) is None
  assert preprocessors.chunk_length({"targets": 100}, 30) == 30
  assert preprocessors.chunk_length({"targets": 20}, 30) == 18


def test_mixture_shares_follow_token_counts(data_dir):
  path, _ = data_dir
  sources = json.loads((path / "sources.json").read_text())["sources"]
  tokens = {e["task"]: e["splits"]["train"]["tokens"] for e in sources.values()}
  shares = tasks.MIXTURE_TOKEN_SHARES["gf_mixture"]
  total = sum(tokens.values())
  assert shares == pytest.approx({t: n / total for t, n in tokens.items()})
  # seqio samples examples; the rates are set so that the realised *token* shares match.
  ds = seqio.get_mixture_or_task("gf_mixture").get_dataset(
      sequence_length={"targets": 1024}, split="train", use_cached=True, shuffle=True, seed=0,
      passthrough_features=["id"])
  source = {d["id"]: f"gf_{d['source']}" for d in docs()}
  realised = collections.Counter()
  for ex in ds.take(3000).as_numpy_iterator():
    realised[source[ex["id"].decode()]] += len(ex["targets"]) - 2
  assert realised["gf_docs"] / sum(realised.values()) == pytest.approx(shares["gf_docs"], abs=0.04)


def test_trainer_path_packs_train_and_validation(data_dir):
  length = 128
  mixture = seqio.get_mixture_or_task("gf_mixture")
  for split in ("train", "validation"):
    ds = mixture.get_dataset(
        sequence_length={"targets": length}, split=split, shuffle=True, seed=1, use_cached=True,
        shard_info=seqio.ShardInfo(index=1, num_shards=2), num_epochs=1)
    packed = seqio.DecoderFeatureConverter(pack=True)(ds, {"targets": length})
    batch = next(packed.batch(4).as_numpy_iterator())
    assert set(batch) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                          "decoder_segment_ids", "decoder_positions"}
    assert batch["decoder_target_tokens"].shape == (4, length)
    targets, segments = batch["decoder_target_tokens"], batch["decoder_segment_ids"]
    starts = (batch["decoder_positions"] == 0) & (segments > 0)
    assert np.all(targets[starts] == 2)  # Every packed segment starts with BOS.
    assert segments.max() > 1  # Several chunks were packed into one row.


def test_token_shares_temperature_and_caps():
  assert mixtures.token_shares({"a": 300, "b": 100}) == pytest.approx({"a": 0.75, "b": 0.25})
  assert mixtures.token_shares({"a": 400, "b": 100}, temperature=2) == pytest.approx({"a": 2 / 3, "b": 1 / 3})
  assert mixtures.token_shares({"a": 400, "b": 100}, caps={"a": 100}) == pytest.approx({"a": 0.5, "b": 0.5})
  with pytest.raises(tasks.MixtureConfigError, match="at least one task"):
    mixtures.token_shares({})
  with pytest.raises(tasks.MixtureConfigError, match="zero weight"):
    mixtures.token_shares({"a": 0})


def write_yaml(tmp_path, text):
  path = tmp_path / "mix.yaml"
  path.write_text(text)
  return str(path)


def test_yaml_mixture(data_dir, tmp_path):
  name = tasks.register_mixture_from_yaml(write_yaml(tmp_path, """
name: gf_docs_heavy
tasks:
  gf_docs: {rate: 0.6}
  gf_web: {weight_by: tokens}
"""))
  assert name == "gf_docs_heavy"
  assert tasks.MIXTURE_TOKEN_SHARES[name] == pytest.approx({"gf_docs": 0.6, "gf_web": 0.4})
  mixture = seqio.get_mixture_or_task(name)
  assert {t.name for t in mixture.tasks} == {"gf_docs", "gf_web"}
  tasks.register_mixture_from_yaml(write_yaml(tmp_path, """
name: gf_docs_heavy
tasks:
  gf_docs: {rate: 2}
  gf_web: {rate: 2}
"""))  # Re-registering replaces; fixed rates alone are normalised.
  assert tasks.MIXTURE_TOKEN_SHARES[name] == pytest.approx({"gf_docs": 0.5, "gf_web": 0.5})


@pytest.mark.parametrize("text, message", [
    ("name: m\ntasks: {gf_nope: {rate: 1}}", "unknown task 'gf_nope'"),
    ("name: m\ntasks: {gf_docs: {rate: -1}}", "invalid rate -1"),
    ("name: m\ntasks: {}", "has no tasks"),
    ("name: m", "has no tasks"),
    ("tasks: {gf_docs: {rate: 1}}", "non-empty string 'name'"),
    ("name: m\ntasks: {gf_docs: {rate: 1, weight_by: tokens}}", "exactly one of"),
    ("name: m\ntasks: {gf_docs: {rate: 1}, gf_web: {weight_by: tokens}}", "leaving nothing"),
    ("name: m\ntasks: {gf_docs: {weight_by: bytes}}", "must be 'tokens'"),
    ("name: m\ntemperature: 0\ntasks: {gf_docs: {rate: 1}}", "temperature"),
    ("name: m\ntasks: {gf_docs: {rate: 0}}", "all rates are zero"),
    ("name: m\nrates: 1\ntasks: {gf_docs: {rate: 1}}", "Unknown mixture config keys"),
    ("- just a list", "must be a mapping"),
    ("name: [unclosed", "not valid YAML"),
])
def test_yaml_mixture_errors(data_dir, tmp_path, text, message):
  with pytest.raises(tasks.MixtureConfigError, match=message.replace("[", r"\[")):
    tasks.register_mixture_from_yaml(write_yaml(tmp_path, text))


def test_unfinished_data_dir_is_refused(tmp_path):
  with pytest.raises(tasks.DataDirError, match="_SUCCESS"):
    tasks.register_data_dir(str(tmp_path))
