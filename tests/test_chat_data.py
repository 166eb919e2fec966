"""pipelines.chat_data: validation with counted rejects, loss masks in the seqio cache, determinism,
and the per-input layout (byte-identical to the default one, duplicates decided across files)."""

import collections
import json
import os
import shutil

import apache_beam as beam
import numpy as np
import pytest
import seqio

from beam_runners import RUNNERS
from pipelines import chat_data
from pipelines import chat_data_shardwise
from pipelines import common
from pipelines import pii
from pipelines import spill
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


# ---- the per-input layout (pipelines/chat_data_shardwise.py): the same bytes as the default ----

PER_INPUT = ["--shard_layout=per_input"]
# Small enough that the validation and rejects counts, which come from the data, are several shards.
LAYOUT_TARGET_SHARD_BYTES = 1000


def _layout_argv(inputs, tok, out, *flags):
  return [f"--input={inputs}/*.jsonl", f"--tokenizer={tok}", f"--output_dir={out}", "--max_length=64",
          "--validation_fraction=0.2", "--num_shards=3",
          f"--target_shard_bytes={LAYOUT_TARGET_SHARD_BYTES}", *flags]


def _output_files(directory) -> dict[str, bytes]:
  """Every file under ``directory``, by relative path."""
  return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def layout_runs(chat_run, tmp_path_factory):
  """Five input files (the chat_run inputs, cut, and chat_fixtures.duplicate_files) and the job's
  output in each layout: ``(input dir, tokenizer, {layout: output dir})``."""
  root, tok, _ = chat_run
  base = tmp_path_factory.mktemp("chat_layouts")
  inputs = base / "in"
  inputs.mkdir()
  for name in ("instructions.jsonl", "preferences.jsonl", "extra.jsonl"):
    (inputs / name).write_text("\n".join((root / "in" / name).read_text().splitlines()[:40]) + "\n")
  for name, lines in chat_fixtures.duplicate_files().items():
    (inputs / name).write_text("\n".join(lines) + "\n")
  outputs = {}
  for layout in ("by_size", "per_input"):
    outputs[layout] = base / layout
    chat_data.main(_layout_argv(inputs, tok, outputs[layout], f"--shard_layout={layout}"))
  return inputs, tok, outputs


def test_per_input_output_is_byte_identical_to_the_default_layout(layout_runs):
  inputs, _, outputs = layout_runs
  default, per_input = _output_files(outputs["by_size"]), _output_files(outputs["per_input"])
  assert sorted(per_input) == sorted(default)
  assert [name for name in default if per_input[name] != default[name]] == []
  for name in ("_SUCCESS", "sources.json", "stats.json", "cache/gf_pref_dups_b/COMPLETED",
               "cache/gf_chat_dups_b/info.train.json",
               "cache/gf_chat_instructions/train.tfrecord-00002-of-00003"):
    assert name in per_input, name
  assert not [name for name in per_input if "spill" in name]
  assert not list(inputs.parent.glob("per_input.tmp-*"))  # The spill files went with it.


def test_the_layouts_decide_duplicates_across_files(layout_runs):
  """What the byte comparison covers: duplicates whose decision needs records of other files."""
  _, _, outputs = layout_runs
  stats = json.loads((outputs["per_input"] / "stats.json").read_text())
  rejects = [json.loads(line) for path in sorted((outputs["per_input"] / "rejects").iterdir())
             for line in path.read_text().splitlines()]
  duplicates = collections.Counter((r["id"], r["details"]["duplicate_of"]) for r in rejects
                                   if r["reason"] == "exact_duplicate")
  same_line = chat_data.record_id({}, chat_fixtures.duplicate_files()["dups_a.jsonl"][-1].encode())
  assert duplicates == {("zz-late", "aa-early"): 1, ("split", "aa-colour"): 2, ("twin", "twin"): 1,
                        ("pp-2", "pp-1"): 1, (same_line, same_line): 1,
                        (chat_data.record_id({}, (outputs["per_input"].parent / "in" / "instructions.jsonl")
                                             .read_text().splitlines()[0].encode()),) * 2: 1}
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  assert stats["dropped"]["exact_duplicate"] == 7 and stats["dropped"]["bad_json"] == 2
  assert stats["kept_sft"] + stats["kept_preference"] == stats["kept"]


def test_validation_and_rejects_shard_counts_follow_the_data(layout_runs):
  """Without counts for them, validation and rejects get shards for the data's bytes: validation
  from its share of the input, rejects from their own; every reject is in the shard its id names."""
  inputs, _, outputs = layout_runs
  out, target = outputs["by_size"], LAYOUT_TARGET_SHARD_BYTES
  input_bytes = sum(path.stat().st_size for path in inputs.glob("*.jsonl"))
  validation = -(-(-(-input_bytes * 2 // 10)) // target)  # ceil(ceil(bytes * 0.2) / target)
  assert validation >= 2
  sources = json.loads((out / "sources.json").read_text())
  assert sources["num_shards"] == {"train": 3, "validation": validation}
  for entry in sources["sources"].values():
    assert json.loads((out / "cache" / entry["task"] / "info.validation.json").read_text())[
        "num_shards"] == validation
  names = sorted(path.name for path in (out / "rejects").iterdir())
  r = len(names)
  assert names == [f"rejects-{i:05d}-of-{r:05d}.jsonl" for i in range(r)]
  assert r == -(-sum((out / "rejects" / name).stat().st_size for name in names) // target) >= 2
  rejects = []
  for i, name in enumerate(names):
    records = [json.loads(line) for line in (out / "rejects" / name).read_text().splitlines()]
    assert [x["id"] for x in records] == sorted(x["id"] for x in records)
    assert all(common.stable_hash(x["id"]) % r == i for x in records)
    rejects += records
  stats = json.loads((out / "stats.json").read_text())
  assert collections.Counter(x["reason"] for x in rejects) == stats["dropped"]


@pytest.mark.parametrize("runner", ["multi_processing", "buckets"])
def test_per_input_output_is_byte_identical_under_other_runners(layout_runs, tmp_path, runner):
  inputs, tok, outputs = layout_runs
  flags = RUNNERS[runner] if runner in RUNNERS else ["--num_buckets=2"]
  chat_data.main(_layout_argv(inputs, tok, tmp_path / "out", *PER_INPUT, *flags))
  reference, mine = _output_files(outputs["by_size"]), _output_files(tmp_path / "out")
  assert sorted(mine) == sorted(reference)
  assert [name for name in reference if mine[name] != reference[name]] == []


def test_a_truncated_spill_file_fails_clearly(layout_runs, tmp_path):
  """Steps 1 and 2 by hand: a truncated step-1 spill file is a SpillError in the step that reads
  it, not a silently smaller bucket."""
  inputs, tok, _ = layout_runs
  files = tuple(sorted(str(p) for p in inputs.glob("*.jsonl")))
  shards = {"train": 3, "validation": 1}
  plan = chat_data_shardwise.Plan(files, 2, shards, str(tmp_path / "spill"))
  os.makedirs(plan.spill_dir)
  model_proto = open(tok, "rb").read()
  step1 = chat_data_shardwise.SpillInputFile(plan, chat_data.PrepareConversation(
      model_proto, 64, 0.5, pii.PiiConfig(), None))
  step1.setup()
  held = [out for i in range(len(files)) for out in step1.process((i, []))
          if not isinstance(out, beam.pvalue.TaggedOutput)]
  bucket = min(p for p, _ in held if plan.step_of(p) == "exact")
  paths = sorted(path for p, path in held if p == bucket)
  assert len(paths) > 1
  assert list(chat_data_shardwise.ExactEdges(plan).process((bucket, paths)))  # Intact: it runs.
  with open(paths[0], "r+b") as f:
    f.truncate(os.path.getsize(paths[0]) - 3)
  with pytest.raises(spill.SpillError, match="truncated"):
    list(chat_data_shardwise.ExactEdges(plan).process((bucket, paths)))


def test_a_negative_bucket_count_is_refused(chat_run, tmp_path):
  root, tok, _ = chat_run
  with pytest.raises(common.StageError, match="num_buckets"):
    chat_data.main(_layout_argv(root / "in", tok, tmp_path / "out", *PER_INPUT, "--num_buckets=-1"))
  assert not (tmp_path / "out").exists()
