"""pipelines.chat_data: validation with counted rejects, loss masks in the seqio cache, determinism."""

import collections
import json
import os
import shutil

import numpy as np
import pytest
import seqio

from pipelines import chat_data
from tasks import chat_tasks
from tasks import chat_template as ct
from tests import chat_fixtures

BAD = [
    ("bad_json", '{"messages": [}'),
    ("bad_record", '[1, 2]'),
    ("unknown_format", json.dumps({"text": "hello"})),
    ("non_alternating", json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})),
    ("system_only", json.dumps({"messages": [{"role": "system", "content": "Be nice."}]})),
    ("empty_response", json.dumps({"prompt": "Name a fruit.", "completion": "   "})),
    ("no_response", json.dumps({"messages": [{"role": "user", "content": "Name a fruit."}]})),
    ("chosen_equals_rejected", json.dumps({"prompt": "Name a tool.", "chosen": "Here is one: saw.",
                                           "rejected": " Here is one: saw. "})),
    ("too_long", json.dumps({"prompt": "Name a fruit.", "completion": " ".join(["apple"] * 200)})),
    ("toxic", json.dumps({"prompt": "Name a fruit.", "completion": "You stupid idiot, shut up you moron, fuck off."})),
]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  tok = chat_fixtures.train_chat_tokenizer(str(root))
  inputs = root / "in"
  inputs.mkdir()
  shutil.copy(os.path.join(chat_fixtures.CHAT_DIR, "instructions.jsonl"), inputs / "instructions.jsonl")
  shutil.copy(os.path.join(chat_fixtures.CHAT_DIR, "preferences.jsonl"), inputs / "preferences.jsonl")
  first = (inputs / "instructions.jsonl").read_text().splitlines()[0]
  email = json.dumps({"prompt": "Mail me at jane.doe@example.com please.", "completion": "Here is one: red."})
  (inputs / "extra.jsonl").write_text("\n".join([line for _, line in BAD] + [first, email]) + "\n")
  stats = chat_data.chat_data(str(inputs / "*.jsonl"), tok, str(root / "out"), max_length=64)
  return root, tok, stats


def test_every_record_is_accounted_for(chat_run):
  root, _, stats = chat_run
  n_in = sum(len(f.read_text().splitlines()) for f in (root / "in").iterdir())
  assert stats["in"] == n_in == stats["kept"] + stats["dropped_total"]
  for reason, _ in BAD:
    assert stats["dropped"].get(reason) == 1, (reason, stats["dropped"])
  assert stats["dropped"]["exact_duplicate"] == 1  # the copied first instruction
  assert stats["kept_sft"] == 320 + 1 and stats["kept_preference"] == 320
  rejects = [json.loads(l) for l in (root / "out" / "rejects" / "rejects-00000-of-00001.jsonl").read_text().splitlines()]
  assert collections.Counter(r["reason"] for r in rejects) == stats["dropped"]


def _read(task, split):
  ds = seqio.get_mixture_or_task(task).get_dataset(None, split=split, use_cached=True, shuffle=False)
  return [{k: [int(i) for i in v.numpy()] if v.dtype.is_integer else v.numpy() for k, v in ex.items()} for ex in ds]


def test_cache_holds_masks_and_pairs(chat_run):
  root, tok, _ = chat_run
  import tasks
  names = tasks.register_data_dir(str(root / "out"))
  assert names == ["gf_chat_extra", "gf_chat_instructions", "gf_pref_preferences"]
  sp = chat_fixtures.processor(tok)
  eot, sot = sp.piece_to_id("<end_of_turn>"), sp.piece_to_id("<start_of_turn>")
  examples = [ex for task in ("gf_chat_instructions", "gf_chat_extra") for split in ("train", "validation")
              for ex in _read(task, split)]
  assert len(examples) == 321  # 320 instructions (one copy kept of the duplicate) + the redacted one
  for ex in examples:
    ids, mask = list(ex["targets"]), [m - 1 for m in ex["loss_mask"]]  # stored as 1/2, see chat_tasks
    assert ids[0] == sot and mask[0] == 0  # no BOS in targets: the converter puts it in the inputs
    # Learned tokens: model contents, each closed by <end_of_turn>; the text between is user/template.
    learned = sp.decode([i for i, m in zip(ids, mask) if m and i != eot])
    assert "Here is one:" in learned and "user" not in learned and "Name" not in learned
    masked_eot = sum(1 for i, m in zip(ids, mask) if m and i == eot)
    assert masked_eot == sp.decode(ids).count("<start_of_turn>model\n") == learned.count("Here is one:")
    assert ids.count(sot) == ids.count(eot)
  # The redacted email is not in the cache.
  extra = _read("gf_chat_extra", "train") + _read("gf_chat_extra", "validation")
  assert any("<EMAIL>" in sp.decode(list(e["targets"])) for e in extra)
  assert not any("example.com" in sp.decode(list(e["targets"])) for e in extra)
  pairs = _read("gf_pref_preferences", "train")
  assert pairs
  for p in pairs[:20]:
    n = len(p["prompt"])
    assert list(p["chosen"][:n]) == list(p["prompt"]) == list(p["rejected"][:n])
    assert p["chosen"][-1] == eot == p["rejected"][-1]


def test_packed_sft_batch_keeps_masks_and_segments(chat_run):
  root, tok, _ = chat_run
  import tasks
  tasks.register_data_dir(str(root / "out"))
  lengths = chat_tasks.task_feature_lengths({"targets": 64})
  ds = seqio.get_dataset("gf_chat", lengths, dataset_split="validation", use_cached=True, shuffle=False,
                         num_epochs=1, feature_converter=chat_tasks.ChatFeatureConverter(pack=True))
  single = {tuple(e["targets"]): [m - 1 for m in e["loss_mask"]] for e in _read("gf_chat_instructions", "validation")}
  batch = next(iter(ds.batch(4))).copy()
  batch = {k: v.numpy() for k, v in batch.items()}
  seen = 0
  for r in range(batch["decoder_target_tokens"].shape[0]):
    seg = batch["decoder_segment_ids"][r]
    for s in set(seg) - {0}:
      where = seg == s
      toks = tuple(batch["decoder_target_tokens"][r][where])
      assert list(batch["decoder_positions"][r][where]) == list(range(len(toks)))
      if toks in single:
        assert list(batch["decoder_loss_weights"][r][where]) == single[toks]
        seen += 1
  assert seen >= 2
  assert not batch["decoder_loss_weights"][batch["decoder_segment_ids"] == 0].any()


def test_rerun_is_byte_identical(chat_run, tmp_path):
  root, tok, _ = chat_run
  small = tmp_path / "in"
  small.mkdir()
  for name in ("instructions.jsonl", "preferences.jsonl", "extra.jsonl"):
    (small / name).write_text("\n".join((root / "in" / name).read_text().splitlines()[:30]) + "\n")
  a, b = tmp_path / "a", tmp_path / "b"
  for out in (a, b):
    chat_data.chat_data(str(small / "*.jsonl"), tok, str(out), max_length=64)
  files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
  assert any("tfrecord" in str(f) for f in files)
  for f in files:
    assert (a / f).read_bytes() == (b / f).read_bytes(), f
