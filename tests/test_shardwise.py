"""The per-input layout (``--shard_layout=per_input``, pipelines/shardwise.py) against the default one.

Inputs: a slice of the bundled sample with every planted kind of page, cut into two WARC files
(extract, the fused filter job), and its extracted documents re-sharded into three stage shards
with one malformed line (quality, pii, toxicity). Each stage is run in both layouts: the stats
must be equal, the kept documents and the rejects equal as multisets, and the per-input output
must have one shard per input file, each sorted by id; reruns and the other runners must give
the same bytes.
"""

import filecmp
import glob
import json
import os
import shutil

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from warcio.archiveiterator import ArchiveIterator

from pipelines import (common, decontaminate, dedupe, extract, filter as fused, pii,
                       quality, shardwise, toxicity, train_tokenizer)
from stage_dirs import copy_with_truncated_shard, copy_without_shard, write_stage_dir
from tests.sample_slice import slice_sample
from beam_runners import RUNNERS

DOC_STAGES = {"quality": quality, "pii": pii, "toxicity": toxicity, "decontaminate": decontaminate}
PER_INPUT = [f"--shard_layout={common.PER_INPUT}"]
BROKEN_LINE = '{"id": "broken'


def split_warc(src: str, out_dir: str, parts: int) -> str:
  """Cuts a WARC into ``parts`` files of consecutive records (raw gzip members); returns a glob."""
  os.makedirs(out_dir)
  with open(src, "rb") as f:
    data = f.read()
    f.seek(0)
    it = ArchiveIterator(f)
    members = []
    for record in it:
      offset = it.get_record_offset()
      it.read_to_end(record)
      members.append(data[offset:offset + it.get_record_length()])
  per_part = -(-len(members) // parts)
  for i in range(parts):
    with open(os.path.join(out_dir, f"part{i}.warc.gz"), "wb") as out:
      out.write(b"".join(members[i * per_part:(i + 1) * per_part]))
  return os.path.join(out_dir, "*.warc.gz")


@pytest.fixture(scope="module")
def warcs(tmp_path_factory):
  root = tmp_path_factory.mktemp("warcs")
  taken = slice_sample(str(root / "slice.warc.gz"))
  assert {"real", "toxic", "boilerplate"} <= set(taken), taken
  return split_warc(str(root / "slice.warc.gz"), str(root / "parts"), 2)


def _in_both_layouts(main, root, argv: list[str]) -> dict[str, str]:
  """Runs a job's main once per shard layout: ``{layout: output_dir}``."""
  dirs = {}
  for layout in common.SHARD_LAYOUTS:
    dirs[layout] = str(root / layout)
    main(argv + [f"--output_dir={dirs[layout]}", f"--shard_layout={layout}"])
  return dirs


@pytest.fixture(scope="module")
def extracted(warcs, tmp_path_factory):
  """extract in both layouts: ``{layout: output_dir}``."""
  return _in_both_layouts(extract.main, tmp_path_factory.mktemp("extract"),
                          [f"--input={warcs}", "--languages=en"])


@pytest.fixture(scope="module")
def doc_input(extracted, tmp_path_factory):
  """The extracted documents as three stage shards, a malformed line in shard 0."""
  docs = [json.loads(line) for path in _shards(extracted[common.BY_SIZE])
          for line in open(path)]
  return write_stage_dir(tmp_path_factory.mktemp("docs") / "in", docs, num_shards=3,
                         extra_lines=[BROKEN_LINE])


@pytest.fixture(scope="module")
def doc_stage_runs(doc_input, tmp_path_factory):
  """Every document stage in both layouts: ``{(stage, layout): output_dir}``."""
  root = tmp_path_factory.mktemp("stages")
  dirs = {}
  for stage, module in DOC_STAGES.items():
    for layout in common.SHARD_LAYOUTS:
      dirs[stage, layout] = str(root / f"{stage}-{layout}")
      module.main([f"--input={doc_input}", f"--output_dir={dirs[stage, layout]}",
                   f"--shard_layout={layout}"])
  return dirs


@pytest.fixture(scope="module")
def fused_runs(warcs, tmp_path_factory):
  return _in_both_layouts(fused.main, tmp_path_factory.mktemp("fused"), [f"--input={warcs}", "--languages=en"])


def _shards(directory: str, pattern: str = "docs-*.jsonl") -> list[str]:
  return sorted(glob.glob(os.path.join(directory, pattern)))


def _lines(paths) -> list[str]:
  return sorted(line for path in paths for line in open(path, encoding="utf-8").read().splitlines())


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, name), directory)
                for d, _, names in os.walk(directory) for name in names)


def _assert_same_output(default: str, per_input: str, num_inputs: int, kept: bool = True,
                        rejects: bool = True) -> None:
  """Equal stats, equal multisets of kept docs and of rejects (those written), one sorted shard
  per input file."""
  assert common.read_stats(per_input) == common.read_stats(default)
  patterns = (["docs-*.jsonl"] if kept else []) + (
      [f"{common.REJECTS_DIR}/{common.REJECTS_TAG}-*.jsonl"] if rejects else [])
  for pattern in patterns:
    shards = _shards(per_input, pattern)
    assert [os.path.basename(p) for p in shards] == [
        os.path.basename(common.shard_path("", pattern.split("/")[-1].split("-")[0], i, num_inputs))
        for i in range(num_inputs)], pattern
    assert _lines(shards) == _lines(_shards(default, pattern)), pattern
    for path in shards:
      ids = [json.loads(line)["id"] for line in open(path, encoding="utf-8")]
      assert ids == sorted(ids), path


def test_extract_gives_one_shard_per_warc_file_and_the_default_records(extracted):
  stats = common.read_stats(extracted[common.PER_INPUT])
  assert stats["kept"] > 0 and stats["dropped_total"] > 0, stats
  _assert_same_output(extracted[common.BY_SIZE], extracted[common.PER_INPUT], num_inputs=2)
  # Both WARC files gave documents, so the shards are not one full file and one empty one.
  assert all(os.path.getsize(p) for p in _shards(extracted[common.PER_INPUT]))


@pytest.mark.parametrize("stage", sorted(DOC_STAGES))
def test_document_stages_match_the_default_layout(doc_stage_runs, stage):
  default, per_input = doc_stage_runs[stage, common.BY_SIZE], doc_stage_runs[stage, common.PER_INPUT]
  _assert_same_output(default, per_input, num_inputs=3)
  stats = common.read_stats(per_input)
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  # The malformed line of input shard 0 is a counted reject, in rejects shard 0.
  assert stats["dropped"]["bad_json"] == 1, stats
  first = [json.loads(line) for line in open(_shards(per_input, "rejects/rejects-*.jsonl")[0])]
  assert [r["doc"]["raw"] for r in first if r["reason"] == "bad_json"] == [BROKEN_LINE]


def test_document_stage_shards_follow_their_input_shards(doc_input, doc_stage_runs):
  """A document stays in the shard of its input file (pii keeps every id, so the id sets match)."""
  out = doc_stage_runs["pii", common.PER_INPUT]
  for src, dst in zip(_shards(doc_input), _shards(out)):
    src_ids = {json.loads(line)["id"] for line in open(src) if line.strip() != BROKEN_LINE}
    rejected = {json.loads(line)["id"] for path in _shards(out, "rejects/*.jsonl")
                for line in open(path)}
    assert {json.loads(line)["id"] for line in open(dst)} == src_ids - rejected


def test_fused_job_matches_the_default_layout_stage_by_stage(fused_runs):
  default, per_input = fused_runs[common.BY_SIZE], fused_runs[common.PER_INPUT]
  _assert_same_output(default, per_input, num_inputs=2, rejects=False)  # Rejects: per stage.
  for stage in ("extract", "quality", "pii", "toxicity"):
    _assert_same_output(fused.stage_dir(default, stage), fused.stage_dir(per_input, stage),
                        num_inputs=2, kept=False)
  job = common.read_stats(per_input)
  assert job["dropped"].get("toxicity.toxic", 0) > 0 and job["kept"] > 0, job


def test_fused_job_file_layout(fused_runs):
  per_input = fused_runs[common.PER_INPUT]
  expected = [common.SUCCESS_MARKER, "docs-00000-of-00002.jsonl", "docs-00001-of-00002.jsonl",
              common.STATS_FILE]
  for stage in ("extract", "pii", "quality", "toxicity"):
    expected += [f"stages/{stage}/rejects/rejects-0000{i}-of-00002.jsonl" for i in range(2)]
    expected.append(f"stages/{stage}/stats.json")
  assert _files(per_input) == sorted(expected)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_per_input_output_is_byte_identical_across_runs_and_runners(
    doc_input, warcs, doc_stage_runs, fused_runs, tmp_path, runner):
  flags = PER_INPUT + RUNNERS[runner]
  out = str(tmp_path / "quality")
  quality.main([f"--input={doc_input}", f"--output_dir={out}", *flags])
  reference = doc_stage_runs["quality", common.PER_INPUT]
  assert _files(out) == _files(reference)
  assert all(filecmp.cmp(os.path.join(reference, f), os.path.join(out, f), shallow=False)
             for f in _files(reference))
  out = str(tmp_path / "filter")
  fused.main([f"--input={warcs}", f"--output_dir={out}", "--languages=en", *flags])
  reference = fused_runs[common.PER_INPUT]
  assert _files(out) == _files(reference)
  different = [f for f in _files(reference)
               if not filecmp.cmp(os.path.join(reference, f), os.path.join(out, f), shallow=False)]
  assert not different
  shutil.rmtree(str(tmp_path), ignore_errors=True)


def test_a_failing_element_is_one_counted_reject(doc_input, tmp_path, monkeypatch):
  """A stage DoFn that raises on one document (common.per_element) gives one reject, and the
  other documents of that shard go on."""
  target = json.loads(open(_shards(doc_input)[1]).readline())
  real_redact = pii.redact

  def redact(text):
    if text == target["text"]:
      raise ValueError("planted failure")
    return real_redact(text)

  monkeypatch.setattr(pii, "redact", redact)
  out = str(tmp_path / "pii")
  stats = pii.main([f"--input={doc_input}", f"--output_dir={out}", *PER_INPUT])
  assert stats["dropped"]["pii_error"] == 1, stats
  rejects = [json.loads(line) for line in open(_shards(out, "rejects/*-00001-of-00003.jsonl")[0])]
  [failed] = [r for r in rejects if r["reason"] == "pii_error"]
  assert failed["id"] == target["id"] and "planted failure" in failed["details"]["error"]
  assert stats["kept"] == stats["in"] - stats["dropped_total"] > 0


def test_a_missing_input_shard_is_a_clear_error(doc_input, tmp_path):
  broken = copy_without_shard(doc_input, tmp_path / "in", 1, 3)
  with pytest.raises(common.StageError, match=r"1 shard\(s\) missing: .*docs-00001-of-00003"):
    quality.main([f"--input={broken}", f"--output_dir={tmp_path / 'out'}", *PER_INPUT])
  assert not os.path.exists(tmp_path / "out")


def test_a_truncated_input_shard_is_a_clear_error(doc_input, tmp_path):
  broken = copy_with_truncated_shard(doc_input, tmp_path / "in", 2, 3)
  with pytest.raises(Exception, match="truncated"):
    toxicity.main([f"--input={broken}", f"--output_dir={tmp_path / 'out'}", *PER_INPUT])
  assert not os.path.exists(tmp_path / "out")


def test_flags_that_do_not_apply_are_refused(doc_input, warcs, tmp_path, capsys):
  out = str(tmp_path / "out")
  with pytest.raises(common.StageError, match="--num_shards"):
    quality.main([f"--input={doc_input}", f"--output_dir={out}", "--num_shards=2", *PER_INPUT])
  with pytest.raises(common.StageError, match="--num_reject_shards"):
    extract.main([f"--input={warcs}", f"--output_dir={out}", "--num_reject_shards=2", *PER_INPUT])
  with pytest.raises(common.StageError, match="pipelines.dedupe"):
    fused.main([f"--input={warcs}", f"--output_dir={out}", "--dedupe=true", *PER_INPUT])
  with pytest.raises(common.StageError, match="--num_shards"):
    dedupe.main([f"--input={doc_input}", f"--output_dir={out}", "--num_shards=2", *PER_INPUT])
  with pytest.raises(SystemExit):  # A stage without a per-input layout refuses the flag.
    common.parse_stage_args("a stage", [f"--input={doc_input}", f"--output_dir={out}", *PER_INPUT])
  assert "not supported by this stage" in capsys.readouterr().err
  assert not os.path.exists(out)


def test_an_unknown_output_tag_fails_the_job():
  outputs = shardwise.ShardOutputs(1)
  with pytest.raises(common.StageError, match="'other'"):
    outputs.route(0, [beam.pvalue.TaggedOutput("other", {})])


def test_stage_counters_are_beam_metrics_equal_to_the_stats(doc_input, tmp_path):
  """The stage DoFns' counters (common.keep / common.reject) and the reader's ``in`` are Beam
  Metrics of the per-file step, with the values stats.json holds."""
  out = str(tmp_path / "quality")
  os.makedirs(out)
  parsed, _ = common.parse_stage_args("", [f"--input={doc_input}", f"--output_dir={out}", *PER_INPUT],
                                      quality.add_args, per_input=True)
  result = shardwise.run_chain(
      common.stage_input_files(doc_input), shardwise.ReadDocShard(quality.STAGE),
      [shardwise.Stage(quality.STAGE, quality.steps(parsed), out)], out, PipelineOptions([]))
  counters = {c.key.metric.name: c.committed
              for c in result.metrics().query(MetricsFilter().with_namespace(quality.STAGE))["counters"]}
  stats = common.read_stats(out)
  assert counters["in"] == stats["in"] and counters["kept"] == stats["kept"] > 0
  assert {k[len("dropped."):]: v for k, v in counters.items() if k.startswith("dropped.")} == stats["dropped"]


def test_sampled_tokenizer_job_reads_files_with_the_same_checks(doc_input, tmp_path):
  """train_tokenizer --sample_docs reads the shards itself, twice (pipelines.train_tokenizer,
  SampleFiles): a truncated shard and a missing one are still refused."""
  truncated = str(tmp_path / "truncated")
  shutil.copytree(doc_input, truncated)
  path = common.shard_path(truncated, common.DOCS_PREFIX, 1, 3)
  open(path, "w").writelines(open(path).readlines()[:-1])
  with pytest.raises(Exception, match="truncated"):
    train_tokenizer.train_tokenizer(truncated, str(tmp_path / "tok"), 300, sample_docs=5)
  missing = str(tmp_path / "missing")
  shutil.copytree(doc_input, missing)
  os.remove(common.shard_path(missing, common.DOCS_PREFIX, 0, 3))
  with pytest.raises(common.StageError, match="missing"):
    train_tokenizer.train_tokenizer(missing, str(tmp_path / "tok"), 300, sample_docs=5)
  assert not os.path.exists(tmp_path / "tok")


def test_a_step_with_bundle_hooks_is_refused():
  with pytest.raises(common.StageError, match="CountProgress"):
    shardwise.Stage("quality", (common.CountProgress("quality"),), "out")
