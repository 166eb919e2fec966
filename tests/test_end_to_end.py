"""The whole workflow on the bundled sample, as `make demo` runs it (with fewer training steps).

Asserts the promises of the Foundation issue: duplicates are removed, no planted PII reaches the
token shards, rerunning the data stages gives byte-identical outputs, and training loss falls.
"""

import filecmp
import glob
import json
import os
import sys

import pytest
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import demo  # noqa: E402

MANIFEST = os.path.join(REPO_ROOT, "data", "sample", "manifest.json")
DATA_STAGES = ("extract", "quality", "pii", "toxicity", "dedupe", "tokenizer", "data")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  work_dir = str(tmp_path_factory.mktemp("demo"))
  summary = demo.main([f"--work_dir={work_dir}", "--train_steps=120"])
  return work_dir, summary


@pytest.fixture(scope="module")
def manifest():
  with open(MANIFEST) as f:
    return json.load(f)


def _decoded_shard_texts(work_dir):
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=os.path.join(work_dir, "tokenizer", "tokenizer.model"))
  texts = []
  for path in sorted(glob.glob(os.path.join(work_dir, "data", "cache", "*", "*.tfrecord-*"))):
    for record in tf.data.TFRecordDataset(path):
      example = tf.train.Example.FromString(record.numpy())
      texts.append(sp.decode(list(example.features.feature["targets"].int64_list.value)))
  return texts


def _pages(manifest):
  pages = manifest["pages"]
  return pages.items() if isinstance(pages, dict) else ((p["url"], p) for p in pages)


def test_every_stage_accounts_for_every_record(demo_run):
  _, summary = demo_run
  for stage, stats in summary["stages"].items():
    assert stats["in"] == stats["kept"] + sum(stats["dropped"].values()), stage
  # Each document stage reads exactly what the previous one kept; the tokenizer and the tokenize
  # job both read the deduplicated documents.
  stages = summary["stages"]
  order = ["extract", "quality", "pii", "toxicity", "dedupe"]
  for before, after in zip(order, order[1:]):
    assert stages[after]["in"] == stages[before]["kept"]
  assert stages["train_tokenizer"]["in"] == stages["tokenize"]["in"] == stages["dedupe"]["kept"]
  assert stages["tokenize"]["train_tokens"] > 0 and stages["tokenize"]["validation_tokens"] > 0


def test_planted_pii_never_reaches_token_shards(demo_run, manifest):
  work_dir, _ = demo_run
  corpus = "\n".join(_decoded_shard_texts(work_dir))
  planted = [item["value"] for _, page in _pages(manifest) for item in page.get("pii", [])]
  assert len(planted) > 50
  leaked = [value for value in planted if value in corpus]
  assert not leaked, leaked[:5]
  assert "<EMAIL>" in corpus  # redacted text is kept, with typed placeholders


def test_duplicates_are_removed(demo_run):
  work_dir, summary = demo_run
  dedupe = summary["stages"]["dedupe"]
  assert dedupe["dropped"].get("exact_duplicate", 0) > 0
  assert dedupe["dropped"].get("near_duplicate", 0) > 0
  texts = _decoded_shard_texts(work_dir)
  assert len(texts) == len(set(texts))


def test_toxic_and_non_english_pages_are_dropped(demo_run):
  _, summary = demo_run
  assert summary["stages"]["toxicity"]["dropped"].get("toxic", 0) > 0
  assert summary["stages"]["extract"]["dropped"].get("language", 0) > 0


def test_data_stages_are_byte_identical_on_rerun(demo_run, tmp_path):
  work_dir, _ = demo_run
  demo.main([f"--work_dir={tmp_path}", "--only_data"])
  for stage in DATA_STAGES:
    first, second = os.path.join(work_dir, stage), os.path.join(tmp_path, stage)
    files = sorted(
        os.path.relpath(p, first)
        for p in glob.glob(os.path.join(first, "**"), recursive=True)
        if os.path.isfile(p)
    )
    assert files, stage
    assert files == sorted(
        os.path.relpath(p, second)
        for p in glob.glob(os.path.join(second, "**"), recursive=True)
        if os.path.isfile(p)
    )
    match, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert not mismatch and not errors, (stage, mismatch, errors)


def test_training_loss_falls_and_eval_reports_perplexity(demo_run):
  _, summary = demo_run
  train = summary["train"]
  assert train["last_step"] > train["first_step"]
  assert train["last_loss"] < 0.8 * train["first_loss"]
  for result in summary["eval"]["results"].values():
    assert result["perplexity"] > 1.0
  assert summary["sample"]["completion"].strip()
