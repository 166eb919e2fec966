"""Tests for tasks/: cached Tasks, chunking with EOS, the token-weighted Mixture, YAML mixtures."""

import collections
import json
import logging
import random
import shutil

import numpy as np
import pytest
import seqio
import sentencepiece as spm

import tasks
from model import data
from pipelines import common
from pipelines import tokenize
from tasks import mixtures
from tasks import preprocessors
from test_tokenizer import make_text, options, train, write_stage_dir

LONG_ID = "00000000000000dd"


def docs():
  rng = random.Random(3)
  out = []
  for i in range(150):  # Many short web pages (~20-150 tokens).
    text = make_text(rng, rng.randint(1, 3), 16)
    out.append({"id": f"{common.stable_hash(f'w{i}'):016x}", "source": "web", "text": text})
  for i in range(20):  # Fewer, ~15x longer documentation pages (~500-2000 tokens).
    text = make_text(rng, rng.randint(5, 20), 40)
    out.append({"id": f"{common.stable_hash(f'd{i}'):016x}", "source": "docs", "text": text})
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


def test_cached_dataset_chunks_documents_with_eos_and_no_bos(data_dir):
  path, _ = data_dir
  expected = doc_tokens(path)
  vocab = tasks.get_vocabulary(str(path))
  length = 64
  chunks = collections.defaultdict(list)
  for split in ("train", "validation"):
    ds = seqio.get_mixture_or_task("gf_docs").get_dataset(
        sequence_length={"targets": length}, split=split, use_cached=True, shuffle=False)
    for ex in ds.as_numpy_iterator():
      targets = ex["targets"].tolist()
      assert 1 <= len(targets) <= length
      # No BOS in the targets (the feature converter supplies it); EOS only at the end.
      assert vocab.bos_id not in targets and vocab.eos_id not in targets[:-1]
      chunks[ex["id"].decode()].append(targets)
  assert len(chunks) == 21
  for doc_id, parts in chunks.items():  # Chunks come in order and nothing is truncated.
    # EOS ends the document's last chunk only; a middle chunk ends with the document's own text.
    assert all(part[-1] != 1 for part in parts[:-1]) and parts[-1][-1] == 1
    assert sum(parts, []) == expected[doc_id] + [1]
  assert len(chunks[LONG_ID]) == -(-len(expected[LONG_ID]) // (length - 1)) > 5
  with pytest.raises(ValueError, match="requires caching"):
    seqio.get_mixture_or_task("gf_docs").get_dataset({"targets": length}, use_cached=False)


def test_max_chunk_tokens_caps_chunks(data_dir):
  path, _ = data_dir
  tasks.register_data_dir(str(path), max_chunk_tokens=10)
  try:
    ds = seqio.get_mixture_or_task("gf_web").get_dataset(
        sequence_length={"targets": 512}, split="train", use_cached=True, shuffle=False)
    lengths = [len(ex["targets"]) for ex in ds.as_numpy_iterator()]
    assert max(lengths) == 11 and min(lengths) >= 2  # 10 tokens (+ EOS on a last chunk).
  finally:
    tasks.register_data_dir(str(path))


def test_split_into_chunks_rejects_impossible_lengths():
  with pytest.raises(ValueError, match="at least one token"):
    preprocessors.chunk_length({"targets": 1}, None)
  assert preprocessors.chunk_length({"targets": 2}, None) == 1
  assert preprocessors.chunk_length(None, None) is None
  assert preprocessors.chunk_length({"targets": 100}, 30) == 30
  assert preprocessors.chunk_length({"targets": 20}, 30) == 19


def draw_token_fractions(mixture, length, num_examples, seed=0):
  """Content tokens per task of ``num_examples`` examples drawn through seqio, as the trainer draws."""
  ds = seqio.get_mixture_or_task(mixture).get_dataset(
      sequence_length={"targets": length}, split="train", use_cached=True, shuffle=True, seed=seed,
      passthrough_features=["id"])
  source = {d["id"]: f"gf_{d['source']}" for d in docs()}
  draws = np.zeros((num_examples, 2))  # Content tokens of each draw from gf_docs, gf_web.
  for i, ex in enumerate(ds.take(num_examples).as_numpy_iterator()):
    content = len(ex["targets"]) - int(ex["targets"][-1] == 1)  # EOS ends a document's last chunk.
    draws[i, ["gf_docs", "gf_web"].index(source[ex["id"].decode()])] = content
  return draws


def test_mixture_realises_token_shares_when_documents_are_chunked(data_dir):
  path, _ = data_dir
  sources = json.loads((path / "sources.json").read_text())["sources"]
  train = {e["task"]: e["splits"]["train"] for e in sources.values()}
  total = sum(c["tokens"] for c in train.values())
  shares = tasks.MIXTURE_TOKEN_SHARES["gf_mixture"]
  assert shares == pytest.approx({t: c["tokens"] / total for t, c in train.items()})
  length = 64  # Chunks of 63 tokens: a gf_docs page gives ~8-30 examples, a gf_web page 1-3.
  chunks = {t: c["chunks"][str(length - 1)] for t, c in train.items()}
  per_doc = {t: chunks[t] / train[t]["documents"] for t in train}
  assert per_doc["gf_docs"] > 4 * per_doc["gf_web"]

  draws = draw_token_fractions("gf_mixture", length, 3000)
  share = shares["gf_docs"]
  realised = draws[:, 0].sum() / draws.sum()
  # Standard error of a ratio of means over independent draws (delta method).
  stderr = np.std(draws[:, 0] - share * draws.sum(axis=1)) / np.mean(draws.sum(axis=1)) / np.sqrt(len(draws))
  assert stderr < 0.015
  assert realised == pytest.approx(share, abs=4 * stderr)
  # Rates from tokens per *document* (the old rule) would give gf_docs this token fraction:
  # example rates ∝ share·documents/tokens, content tokens per example = tokens/chunks.
  old = {t: shares[t] * train[t]["documents"] / chunks[t] for t in train}
  old_fraction = old["gf_docs"] / sum(old.values())
  assert abs(old_fraction - share) > 10 * stderr  # So the test would catch that bug.


def test_mixture_rates_follow_the_sequence_length(data_dir):
  mixture = seqio.get_mixture_or_task("gf_mixture")
  assert isinstance(mixture, mixtures.TokenShareMixture)
  shares = tasks.MIXTURE_TOKEN_SHARES["gf_mixture"]
  counts = mixtures.TASK_COUNTS
  for length in (64, 1024):
    rates = mixture.rates({"targets": length})
    for task, rate in rates.items():
      expected = shares[task] * counts[task]["chunks"][str(length - 1)] / counts[task]["tokens"]
      assert rate == pytest.approx(expected)
  # No sequence length (no chunking): one example per document.
  for task, rate in mixture.rates(None).items():
    assert rate == pytest.approx(shares[task] * counts[task]["documents"] / counts[task]["tokens"])


def task_doc_lengths(data_dir, task):
  sources = {d["id"]: f"gf_{d['source']}" for d in docs()}
  lengths = []
  ds = seqio.get_mixture_or_task(task).get_dataset(None, split="train", use_cached=True, shuffle=False)
  for ex in ds.as_numpy_iterator():
    assert sources[ex["id"].decode()] == task
    lengths.append(len(ex["targets"]) - 1)  # Without chunking: the document plus EOS.
    assert ex["targets"][-1] == 1 and 2 not in ex["targets"]
  return lengths


def test_examples_at_is_exact_at_recorded_lengths_and_close_between(data_dir):
  path, _ = data_dir
  for task in ("gf_docs", "gf_web"):
    lengths = task_doc_lengths(path, task)
    counts = mixtures.TASK_COUNTS[task]
    def true_count(c):
      return sum(-(-n // c) for n in lengths)
    assert mixtures.examples_at(counts, None) == len(lengths)
    assert mixtures.examples_at(counts, 63) == true_count(63)
    # The recorded count is what the Task really yields at that sequence length.
    ds = seqio.get_mixture_or_task(task).get_dataset({"targets": 64}, split="train", use_cached=True,
                                                     shuffle=False)
    assert sum(1 for _ in ds.as_numpy_iterator()) == true_count(63)
    assert mixtures.examples_at(counts, 1) == sum(lengths)
    recorded = (1,) + tokenize.STANDARD_CHUNK_LENGTHS + (10**9,)
    for c in (20, 45, 98, 200, 700, 3000, 20000, 10**6):  # Not recorded: interpolated.
      lo, hi = max(k for k in recorded if k <= c), min(k for k in recorded if k >= c)
      estimate = mixtures.examples_at(counts, c)
      assert true_count(hi) <= estimate <= true_count(lo)
      assert estimate == pytest.approx(true_count(c), rel=0.1)


def test_sources_json_without_chunk_counts_falls_back_with_a_warning(data_dir, tmp_path, caplog):
  path, _ = data_dir
  old = tmp_path / "old"
  shutil.copytree(path, old)
  record = json.loads((old / "sources.json").read_text())
  for entry in record["sources"].values():
    for split in entry["splits"].values():
      del split["chunks"]
  (old / "sources.json").write_text(json.dumps(record))
  try:
    tasks.register_data_dir(str(old))
    shares = tasks.MIXTURE_TOKEN_SHARES["gf_mixture"]
    with caplog.at_level(logging.WARNING):
      rates = seqio.get_mixture_or_task("gf_mixture").rates({"targets": 64})
    assert "gf_docs: sources.json has no chunk counts" in caplog.text
    for task, rate in rates.items():  # The old rule: share / mean tokens per document.
      counts = mixtures.TASK_COUNTS[task]
      assert rate == pytest.approx(shares[task] * counts["documents"] / counts["tokens"])
  finally:
    tasks.register_data_dir(str(path))


def test_trainer_path_packs_train_and_validation(data_dir):
  length = 256
  mixture = seqio.get_mixture_or_task("gf_mixture")
  for split in ("train", "validation"):
    ds = mixture.get_dataset(
        sequence_length={"targets": length}, split=split, shuffle=True, seed=1, use_cached=True,
        shard_info=seqio.ShardInfo(index=1, num_shards=2), num_epochs=1)
    packed = data.feature_converter("gf_mixture", pack=True)(ds, {"targets": length})
    batch = next(packed.batch(16).as_numpy_iterator())
    assert set(batch) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                          "decoder_segment_ids", "decoder_positions"}
    assert batch["decoder_target_tokens"].shape == (16, length)
    targets, segments = batch["decoder_target_tokens"], batch["decoder_segment_ids"]
    starts = (batch["decoder_positions"] == 0) & (segments > 0)
    bos = tasks.get_vocabulary(str(data_dir[0])).bos_id
    # Every packed segment's inputs start with the vocabulary's BOS; no target is BOS.
    assert np.all(batch["decoder_input_tokens"][starts] == bos) and not np.any(targets == bos)
    assert segments.max() > 1  # Several chunks (short pages, documents' last chunks) share a row.


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
    ("name: gf_docs\ntasks: {gf_web: {rate: 1}}", "'gf_docs' is the name of a registered task"),
    ("name: my mix\ntasks: {gf_docs: {rate: 1}}", "'my mix' is invalid"),
    ("name: ../m\ntasks: {gf_docs: {rate: 1}}", "'../m' is invalid"),
    ("name: 7m\ntasks: {gf_docs: {rate: 1}}", "'7m' is invalid"),
    ("name: m\ntasks: {gf_docs: {rate: .nan}}", "invalid rate nan"),
    ("name: m\ntasks: {gf_docs: {rate: .inf}, gf_web: {rate: 1}}", "invalid rate inf"),
    ("name: m\ntasks: {gf_docs: {rate: true}}", "invalid rate True"),
    ("name: m\ntasks: {gf_docs: {weight_by: tokens, cap_tokens: .inf}}", "invalid cap_tokens inf"),
    ("name: m\ntemperature: .nan\ntasks: {gf_docs: {rate: 1}}", "temperature must be a finite"),
    ("name: m\ntasks:\n  gf_docs: {rate: 0.5}\n  gf_web: {rate: 0.3}\n  gf_docs: {rate: 0.2}\n",
     "'gf_docs' is listed twice in the same mapping \\(line 5\\)"),
    ("name: m\nname: n\ntasks: {gf_docs: {rate: 1}}", "'name' is listed twice"),
    ("name: m\ntasks: {gf_mixture: {rate: 1}}", "a mixture cannot be a part of another"),
    ("name: m\ntasks: {synthetic_lm: {rate: 1}}", "synthetic_lm has no cached train split"),
])
def test_yaml_mixture_errors(data_dir, tmp_path, text, message):
  with pytest.raises(tasks.MixtureConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
    tasks.register_mixture_from_yaml(write_yaml(tmp_path, text))
  assert "m" not in seqio.MixtureRegistry.names()


def test_yaml_mixture_may_not_replace_a_mixture_registered_elsewhere(data_dir, tmp_path):
  seqio.MixtureRegistry.remove("gf_plain")
  seqio.MixtureRegistry.add("gf_plain", [("gf_docs", 1.0)])
  try:
    with pytest.raises(tasks.MixtureConfigError, match="'gf_plain' is a mixture registered by other code"):
      tasks.register_mixture_from_yaml(write_yaml(tmp_path, "name: gf_plain\ntasks: {gf_web: {rate: 1}}"))
  finally:
    seqio.MixtureRegistry.remove("gf_plain")


def test_unfinished_data_dir_is_refused(tmp_path):
  with pytest.raises(tasks.DataDirError, match="_SUCCESS"):
    tasks.register_data_dir(str(tmp_path))
