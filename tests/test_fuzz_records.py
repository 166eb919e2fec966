"""Document stages under hostile JSONL: property-based fuzzing and the regressions of issue 10.

Every line a reader meets is arbitrary bytes: it must become a document or one counted reject,
never an exception, and whatever a stage writes must be valid UTF-8 JSON. The stages' per-element
functions (quality, PII, toxicity, dedupe shingling) get arbitrary JSON documents the same way.

Fuzz budget: the hypothesis profile (tests/conftest.py): 200 derandomized examples per property,
or 10,000 with ``--hypothesis-profile=long``, the long run recorded in docs/reliability.md.
"""

import json
import os

import apache_beam as beam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import common, dedupe, pii, quality, toxicity
from stage_dirs import read_out, write_stage_dir

FUZZ = settings()  # The loaded profile (tests/conftest.py): 200 examples, or 10,000 with --hypothesis-profile=long.

# Text with what breaks writers and parsers: lone surrogates, NUL, controls, combining marks.
hostile_text = st.text(st.characters(exclude_categories=()))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children,
                                                                         max_size=4),
    max_leaves=20,
)
# Documents that look almost valid: the fields stages read, with any JSON value in them.
doc_like = st.fixed_dictionaries(
    {},
    optional={"id": st.one_of(hostile_text, json_values), "text": st.one_of(hostile_text, json_values),
              "url": st.one_of(hostile_text, json_values), "scores": json_values, "pii": json_values,
              "lang": json_values, "source": json_values},
)


def _line_bytes(value) -> bytes:
  """One JSONL line for ``value``, escaping surrogates the way a JSON writer would."""
  return json.dumps(value, ensure_ascii=True).encode("ascii")


def _writable(record) -> None:
  """Raises unless ``record`` can be written by WriteSortedShards (sorted JSON, strict UTF-8)."""
  line = common.dumps(record).encode("utf-8")
  assert json.loads(line) == json.loads(common.dumps(record))


def _outcome(outputs) -> str:
  """"kept" or the reject reason of a DoFn's outputs for one element (exactly one expected)."""
  assert len(outputs) == 1, outputs
  (out,) = outputs
  if isinstance(out, beam.pvalue.TaggedOutput):
    assert out.tag == common.REJECTS_TAG
    _writable(out.value)
    return out.value["reason"]
  _writable(out)
  return "kept"


# ----------------------------------------------------------------------------- reader


@FUZZ
@given(st.one_of(st.binary(), json_values.map(_line_bytes), doc_like.map(_line_bytes)))
def test_any_line_is_a_document_or_one_counted_reject(line):
  outputs = list(common._ParseDoc("fuzz").process(line))
  reason = _outcome(outputs)
  if reason == "kept":
    doc = outputs[0]
    assert isinstance(doc["id"], str) and isinstance(doc["text"], str)
  else:
    assert reason in ("bad_json", "bad_record")
    assert outputs[0].value["details"]["error"]


# ----------------------------------------------------------------------------- stages

_QUALITY = quality.QualityConfig()


def _quality(doc):
  tagged = list(quality.TagQuality(_QUALITY, ("blocked.example",)).process(doc))
  if len(tagged) == 1 and isinstance(tagged[0], tuple):
    return list(quality.ApplyQualityThresholds(_QUALITY).process(tagged[0]))
  return tagged


def _pii(doc):
  return list(pii.RedactPii(pii.PiiConfig()).process(doc))


def _toxicity(doc):
  return list(toxicity.ScoreToxicity(toxicity.ToxicityConfig()).process(doc))


def _dedupe_shingles(doc):
  fn = dedupe._BandMembers(dedupe.DedupeConfig())
  fn.setup()
  members = fn.process(doc)
  assert all(isinstance(key, tuple) for key, _ in members)
  return [common.keep("dedupe", doc)]


STAGES = {"quality": _quality, "pii": _pii, "toxicity": _toxicity, "dedupe": _dedupe_shingles}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_keeps_or_rejects_any_valid_document(stage):
  run = STAGES[stage]

  @FUZZ
  @given(doc_like.map(_line_bytes) | st.builds(
      lambda i, t, s: _line_bytes({"id": i, "text": t, "scores": s}), hostile_text, hostile_text,
      st.dictionaries(hostile_text, json_values, max_size=3)))
  def check(line):
    doc, _, _ = common.parse_doc(line)
    if doc is None:
      return  # The reader's counted reject (see above); no stage sees it.
    reason = _outcome(run(doc))
    assert reason == "kept" or reason.endswith("_error") or reason in _KNOWN_REASONS[stage]

  check()


_KNOWN_REASONS = {
    "quality": set(quality.rule_bounds(_QUALITY)),
    "pii": {"too_much_pii"},
    "toxicity": {"toxic"},
    "dedupe": set(),
}


def test_a_failure_inside_a_stage_is_a_counted_reject_with_its_error():
  class Boom(Exception):
    pass

  class Fails(beam.DoFn):
    @common.per_element("fuzz", "fuzz_error")
    def process(self, doc):
      if doc["id"] == "bad":
        raise Boom("nothing foresaw this")
      yield common.keep("fuzz", doc)

  (out,) = list(Fails().process({"id": "bad", "text": "x", "blob": b"\x00"}))
  assert out.value["reason"] == "fuzz_error"
  assert out.value["details"]["error"] == "Boom: nothing foresaw this"
  _writable(out.value)  # The bytes value made the doc unwritable: a bounded repr is kept.
  assert out.value["doc"]["id"] == "bad" and "raw" in out.value["doc"]
  assert list(Fails().process({"id": "ok", "text": "x"})) == [{"id": "ok", "text": "x"}]
  with pytest.raises(common.StageError):  # Configuration errors still fail the job.
    class Misconfigured(beam.DoFn):
      @common.per_element("fuzz", "fuzz_error")
      def process(self, doc):
        raise common.StageError("bad flag")
        yield doc
    list(Misconfigured().process({"id": "x"}))


# ----------------------------------------------------------------------------- regressions

BAD_LINES = {
    "non-string id": b'{"id": 17, "text": "a number for an id"}',
    "list id": b'{"id": ["a"], "text": "a list for an id"}',
    "non-dict scores": b'{"id": "aaaaaaaaaaaaaaaa", "text": "scores is a list", "scores": [1]}',
    "non-dict pii": b'{"id": "aaaaaaaaaaaaaaab", "text": "pii is a string", "pii": "none"}',
    "invalid UTF-8": b'{"id": "aaaaaaaaaaaaaaac", "text": "caf\xe9 au lait"}',
    "lone surrogate": b'{"id": "aaaaaaaaaaaaaaad", "text": "half a pair \\ud800 here"}',
    "surrogate in a key": b'{"id": "aaaaaaaaaaaaaaae", "text": "t", "\\udfff": 1}',
}


def test_each_bad_line_is_a_bad_record():
  for name, line in BAD_LINES.items():
    doc, reason, error = common.parse_doc(line)
    assert doc is None and reason == "bad_record" and error, name


@pytest.mark.parametrize("stage", [toxicity, pii])
def test_bad_lines_are_counted_and_the_stage_finishes(tmp_path, stage):
  good = [{"id": f"{i:016x}", "text": "The parser reads the configuration file and returns it."}
          for i in range(3)]
  inp = tmp_path / "in"
  write_stage_dir(inp, good)
  with open(inp / "docs-00000-of-00001.jsonl", "ab") as f:  # Raw bytes: invalid UTF-8 stays.
    f.write(b"".join(line + b"\n" for line in BAD_LINES.values()))
  stats_path = inp / common.STATS_FILE
  stats = json.loads(stats_path.read_text())
  stats["kept"] = stats["in"] = len(good) + len(BAD_LINES)
  stats_path.write_text(json.dumps(stats))
  out = tmp_path / "out"
  result = stage.main([f"--input={inp}", f"--output_dir={out}", "--num_shards=2"])
  assert result["in"] == len(good) + len(BAD_LINES)
  assert result["dropped"].get("bad_record") == len(BAD_LINES)
  kept, rejects = read_out(out)  # read_out decodes strictly: every output byte is UTF-8.
  assert len(kept) + len(rejects) == result["in"]
  assert all(r["details"]["error"] for r in rejects if r["reason"] == "bad_record")


def test_a_missing_shard_is_a_clear_error_naming_it(tmp_path):
  docs = [{"id": f"{i:016x}", "text": f"document number {i}"} for i in range(20)]
  inp = write_stage_dir(tmp_path / "in", docs, num_shards=4)
  os.remove(os.path.join(inp, "docs-00002-of-00004.jsonl"))
  with pytest.raises(common.StageError, match=r"docs-00002-of-00004\.jsonl"):
    toxicity.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}"])
  assert not (tmp_path / "out").exists()


def test_shards_of_two_runs_mixed_in_one_directory_are_refused(tmp_path):
  inp = write_stage_dir(tmp_path / "in", [{"id": "a" * 16, "text": "x"}], num_shards=2)
  open(os.path.join(inp, "docs-00000-of-00003.jsonl"), "w").close()
  with pytest.raises(common.StageError, match="different counts"):
    common.stage_input_files(inp)


def test_a_truncated_shard_disagrees_with_stats_and_fails_the_job(tmp_path):
  docs = [{"id": f"{i:016x}", "text": f"document number {i}"} for i in range(10)]
  inp = write_stage_dir(tmp_path / "in", docs, num_shards=1)
  shard = os.path.join(inp, "docs-00000-of-00001.jsonl")
  lines = open(shard).read().splitlines()
  with open(shard, "w") as f:
    f.write("\n".join(lines[:7]) + "\n")
  with pytest.raises(Exception, match="7 document lines, but its stats.json says the stage kept 10"):
    toxicity.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}"])
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("names", [
    ["docs-00000-of-00002.jsonl", "docs-00001-of-00002.jsonl"],
    ["a/docs-00000-of-00001.jsonl"],
])
def test_complete_shard_sets_pass(names):
  common.check_shards_complete(names, "test")


@pytest.mark.parametrize("names,message", [
    (["docs-00000-of-00002.jsonl"], "docs-00001-of-00002.jsonl"),
    (["docs-00005-of-00002.jsonl"], "index 5"),
    (["docs-extra.jsonl"], "not named"),
])
def test_incomplete_shard_sets_are_named(names, message):
  with pytest.raises(common.StageError, match=message):
    common.check_shards_complete(names, "test")


def test_a_reject_with_unwritable_details_is_still_written():
  """Found by the extract fuzzer: a Content-Type holding a lone surrogate, copied into a
  ``not_html`` reject's details, made the rejects writer fail."""
  out = common.reject("fuzz", "not_html", {"id": "a", "url": "u"}, content_type="\ud800",
                      blob=b"\x00")
  _writable(out.value)
  assert out.value["details"]["content_type"] == "\\ud800"
