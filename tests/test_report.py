"""Tests for pipelines.report: sections, missing stages, malformed inputs, byte-identical reruns."""

import json
import re

import pytest

from pipelines import common
from pipelines import report

# stage -> (in, kept, {reason: n}); toxicity is left out: "not run".
STATS = {
    "extract": (40, 31, {"bad_lang": 5, "empty_text": 4}),
    "quality": (31, 24, {"too_short": 7}),
    "pii": (24, 24, {}),
    "dedupe": (24, 19, {"near_duplicate": 3, "exact_duplicate": 2}),
    "tokenize": (19, 19, {}),
}
SOURCES = {
    "docs": {"task": "gf_docs", "tier": "high",
             "splits": {"train": {"documents": 11, "tokens": 5300, "max_tokens": 900},
                        "validation": {"documents": 1, "tokens": 420, "max_tokens": 420}}},
    "web": {"task": "gf_web", "tier": "standard",
            "splits": {"train": {"documents": 6, "tokens": 1700, "max_tokens": 600},
                       "validation": {"documents": 1, "tokens": 100, "max_tokens": 100}}},
}


def write_json(path, record):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, sort_keys=True, indent=2) + "\n")


def write_stage(work_dir, stage, num_in, kept, dropped, docs=()):
  subdir = "data" if stage == "tokenize" else stage
  directory = work_dir / subdir
  write_json(directory / "stats.json", {"stage": stage, "in": num_in, "kept": kept,
                                        "dropped": dropped, "dropped_total": sum(dropped.values())})
  shards = [[], []]
  for doc in docs:
    shards[common.stable_hash(doc["id"]) % 2].append(common.dumps(doc) + "\n")
  for i, lines in enumerate(shards):
    (directory / f"docs-{i:05d}-of-00002.jsonl").write_text("".join(sorted(lines)))
  (directory / "_SUCCESS").write_text("")
  return directory


def make_docs():
  """19 kept documents: 12 long 'docs' pages and 7 short 'web' pages."""
  docs = []
  for i in range(12):
    docs.append({"id": f"{i:016x}", "source": "docs", "url": f"https://docs.example/{i}",
                 "text": "word " * (200 + 40 * i), "lang": "en", "scores": {}})
  for i in range(7):
    docs.append({"id": f"{100 + i:016x}", "source": "web", "url": f"https://web.example/{i}",
                 "text": "tiny page " * (3 + i), "lang": "en", "scores": {}})
  return docs


def make_work_dir(root):
  for stage, (num_in, kept, dropped) in STATS.items():
    write_stage(root, stage, num_in, kept, dropped, make_docs() if stage == "dedupe" else ())
  write_json(root / "data" / "sources.json", {"sources": SOURCES, "tokenizer": "tokenizer.model"})
  write_json(root / "tokenizer" / "stats.json", {"stage": "train_tokenizer", "vocab_size": 4096,
                                                 "sample_docs": 19, "special_ids": {"pad": 0}})
  (root / "tokenizer" / "_SUCCESS").write_text("")
  return root


@pytest.fixture
def work_dir(tmp_path):
  return make_work_dir(tmp_path / "work")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  """The report of the standard work dir, built once for the tests that only read it."""
  return build(make_work_dir(tmp_path_factory.mktemp("report") / "work"))


def build(work_dir, **kwargs):
  return report.build_report(str(work_dir), train_steps=300, **kwargs)


def section(page, key):
  match = re.search(f'<section id="{key}">(.*?)</section>', page, re.S)
  assert match, f"no section {key}"
  return plain(match.group(1))


def plain(html):
  """The HTML without the class of right-aligned number cells, so that rows read simply."""
  return html.replace('<td class="n">', "<td>")


def test_funnel_shows_every_stage_and_count(page):
  funnel = section(page, "funnel")
  for stage, (num_in, kept, dropped) in STATS.items():
    row = re.search(f"<tr><td>{stage}</td><td>ok</td><td>(\\d+)</td><td>(\\d+)</td><td>(\\d+)</td>",
                    funnel)
    assert row and row.groups() == (str(num_in), str(kept), str(sum(dropped.values()))), stage
  assert "<td>79.2%</td>" in funnel  # dedupe kept 19 of 24.
  assert funnel.count("<svg") == 1


def test_missing_stage_is_reported_not_fatal(page):
  funnel = section(page, "funnel")
  assert "<tr><td>toxicity</td><td>stage not run</td>" in funnel
  assert "toxicity: stage not run" in funnel
  assert ">(not run)</text>" in funnel  # Under "toxicity" on the bar chart's axis.


def test_unfinished_stage_is_reported(work_dir):
  (work_dir / "quality" / "_SUCCESS").unlink()
  funnel = report.funnel_section(report.load(str(work_dir)).stages)
  assert f"<tr><td>quality</td><td>{report.NOT_FINISHED}</td>" in funnel


def test_drop_reasons_table_and_stacked_bars(page):
  drops = section(page, "drops")
  for stage, (num_in, _, dropped) in STATS.items():
    for reason, n in dropped.items():
      assert f"<tr><td>{stage}</td><td>{reason}</td><td>{n}</td>" in drops
  assert drops.count("<svg") == 1
  # The small text of the plot: each bar's dropped total, then one legend entry per reason.
  small_text = re.findall(r"font-size: 7px[^>]*>([^<]+)</text>", drops)
  totals = [str(sum(d.values())) for _, _, d in STATS.values()]
  assert small_text == totals + sorted({r for _, _, d in STATS.values() for r in d})


def test_sources_section_reads_sources_json(page):
  sources = section(page, "sources")
  assert sources.count("<svg") == 1
  assert ("<tr><td>docs</td><td>high</td><td>gf_docs</td><td>11</td><td>5,300</td>"
          "<td>1</td><td>420</td><td>476.7</td></tr>") in sources
  assert "<th>validation tokens</th>" in sources


def test_lengths_are_measured_on_dedupe_output(page):
  lengths = section(page, "lengths")
  assert lengths.count("<svg") == 1
  assert "log scale" in lengths
  # docs: 12 documents of 200 + 40 i words (median 420, max 640); web: 7 of 2 (3 + i) words.
  assert ("<tr><td>docs</td><td>12</td><td>2,100</td>") in lengths
  assert "<td>420</td><td>640</td></tr>" in lengths
  assert "<tr><td>web</td><td>7</td>" in lengths and "<td>12</td><td>18</td></tr>" in lengths
  assert "docs (12)" in lengths and "web (7)" in lengths  # Legend labels.


def test_static_mixture_is_labelled_and_flat(page):
  mixture = section(page, "mixture")
  assert mixture.count("<svg") == 1
  assert "Static mixture rates" in mixture and "flat line" in mixture
  # docs has 5300 of the 7000 train tokens, from step 0 to the end.
  assert "<tr><th>source</th><th>from step 0</th></tr>" in mixture
  assert "<tr><td>docs</td><td>0.757</td></tr>" in mixture
  assert "<tr><td>web</td><td>0.243</td></tr>" in mixture


def test_schedule_file_is_read_with_tasks_schedule(work_dir, tmp_path):
  path = tmp_path / "schedule.yaml"
  path.write_text("stages:\n"
                  "  - {start_step: 0, token_shares: {gf_web: 3, gf_docs: 1}}\n"
                  "  - {start_step: 200, token_shares: {gf_docs: 1}}\n"
                  "  - {start_step: 500, token_shares: {gf_web: 1}}\n")
  data = report.load(str(work_dir), train_steps=300)
  schedule = report.read_schedule(str(path), data.sources)
  mixture = plain(report.mixture_section(data, schedule))
  assert "tasks.schedule" in mixture and "Static" not in mixture
  assert "<th>from step 0</th><th>from step 200</th><th>from step 500</th>" in mixture
  assert "<tr><td>docs</td><td>0.250</td><td>1.000</td><td>0.000</td></tr>" in mixture
  assert "<tr><td>web</td><td>0.750</td><td>0.000</td><td>1.000</td></tr>" in mixture
  assert "Stages starting at steps [500] begin after the last step (300)" in mixture
  assert mixture.count("<svg") == 1


@pytest.mark.parametrize("text, message", [
    ("stages:\n  - {start_step: 0, token_shares: {gf_forum: 1}}\n",
     r"schedule.yaml: key 'stages\[0\]': tasks \['gf_forum'\] are not in"),
    ("stages:\n  - {start_step: 5, token_shares: {gf_web: 1}}\n", "must start at step 0"),
    ("stages: {start_step: 0}\n", "key 'stages' must be list"),
    ("stages: [", "is not valid JSON or YAML"),
])
def test_bad_schedule_file_is_a_clear_error(work_dir, tmp_path, text, message):
  path = tmp_path / "schedule.yaml"
  path.write_text(text)
  sources = report.load(str(work_dir)).sources
  with pytest.raises(report.ReportError, match=message):
    report.read_schedule(str(path), sources)


def test_tokenizer_section(page):
  tokenizer = section(page, "tokenizer")
  assert "<tr><td>vocab_size</td><td>4,096</td></tr>" in tokenizer


def test_every_plot_is_inline_and_nothing_is_fetched(page):
  assert page.count("<svg") == 5
  assert not re.search(r"<script|<link|src=\"http|url\(http|@import", page)
  ids = re.findall(r'\bid="([^"]+)"', page)
  assert len(ids) == len(set(ids)) > 50  # Unique across the plots (matplotlib numbers per figure).
  for ref in set(re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', page)):
    assert "".join(ref) in ids


@pytest.mark.parametrize("broken, message", [
    ({"stage": "quality", "in": 31, "kept": 24}, "missing key 'dropped'"),
    ({"stage": "quality", "in": 31, "kept": 20, "dropped": {"too_short": 7}, "dropped_total": 7},
     "key 'in' is 31 but kept \\+ dropped_total is 27"),
    ({"stage": "quality", "in": "31", "kept": 24, "dropped": {}, "dropped_total": 7},
     "key 'in' must be a non-negative integer"),
    ({"stage": "pii", "in": 31, "kept": 24, "dropped": {"too_short": 7}, "dropped_total": 7},
     "key 'stage' is 'pii', expected 'quality'"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_stats_is_a_clear_error(work_dir, broken, message):
  write_json(work_dir / "quality" / "stats.json", broken)
  with pytest.raises(report.ReportError, match=f"quality/stats.json: {message}"):
    build(work_dir)


def test_invalid_json_names_the_file(work_dir):
  (work_dir / "pii" / "stats.json").write_text("{not json")
  with pytest.raises(report.ReportError, match="pii/stats.json is not valid JSON"):
    build(work_dir)


def test_malformed_sources_names_file_and_key(work_dir):
  broken = json.loads(json.dumps(SOURCES))
  del broken["web"]["splits"]["train"]["tokens"]
  write_json(work_dir / "data" / "sources.json", {"sources": broken})
  with pytest.raises(report.ReportError,
                     match=r"sources.json: sources.web.splits.train: missing key 'tokens'"):
    build(work_dir)


def test_shards_that_disagree_with_stats_are_an_error(work_dir):
  shard = work_dir / "dedupe" / "docs-00000-of-00002.jsonl"
  shard.write_text("".join(shard.read_text().splitlines(keepends=True)[1:]))
  with pytest.raises(report.ReportError, match="kept=19 but its docs-\\*.jsonl shards hold 18"):
    build(work_dir)


def test_bad_document_line_names_file_and_line(work_dir):
  shard = work_dir / "dedupe" / "docs-00001-of-00002.jsonl"
  lines = shard.read_text().splitlines(keepends=True)
  shard.write_text(lines[0] + '{"id": "x", "text": "no source"}\n' + "".join(lines[2:]))
  with pytest.raises(report.ReportError, match="docs-00001-of-00002.jsonl:2: missing key 'source'"):
    build(work_dir)
  shard.write_text(lines[0] + "{broken\n")
  with pytest.raises(report.ReportError, match="docs-00001-of-00002.jsonl:2 is not a JSON record"):
    build(work_dir)


def test_without_dedupe_or_tokenize(work_dir):
  import shutil
  shutil.rmtree(work_dir / "dedupe")
  shutil.rmtree(work_dir / "data")
  write_stage(work_dir, "pii", 19, 19, {}, make_docs())
  page = build(work_dir)
  assert "dedupe: stage not run; showing the documents kept by pii instead" in page
  assert "tokenize stage not run" in section(page, "sources")
  assert "there is no mixture" in section(page, "mixture")


def test_rerun_is_byte_identical_and_cli_writes_it(work_dir, tmp_path):
  out1, out2 = tmp_path / "a" / "report.html", tmp_path / "b" / "report.html"
  report.main([f"--work_dir={work_dir}", f"--output={out1}", "--train_steps=300"])
  report.main([f"--work_dir={work_dir}", f"--output={out2}", "--train_steps=300"])
  assert out1.read_bytes() == out2.read_bytes()
  assert out1.read_text().count("<svg") == 5


def test_missing_work_dir_is_an_error(tmp_path):
  with pytest.raises(report.ReportError, match="does not exist or is empty"):
    report.build_report(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- memorization

from pipelines import pii  # noqa: E402

# source -> (documents, exact, approximate) per membership; PII types in memorized continuations.
MEMORIZED = {"members": {"docs": (10, 3, 6), "web": (8, 1, 2)},
             "non_members": {"docs": (10, 0, 1), "web": (8, 0, 0)}}
MEMORIZED_PII = {"docs": {pii.EMAIL: 3, pii.PHONE: 1}, "web": {pii.EMAIL: 1}}


def write_memorization(work_dir):
  report = {"checkpoint": "ck/300", "num_docs": 10, "prefix_len": 50, "suffix_len": 50,
            "token_shares": {"docs": 0.75, "web": 0.25}}
  for key, per_source in MEMORIZED.items():
    rows = {s: {"documents": n, "exact": e, "approximate": a, "exact_rate": e / n,
                "approximate_rate": a / n, "memorized_ids": [],
                "pii_in_memorized": MEMORIZED_PII[s] if key == "members" else {}}
            for s, (n, e, a) in per_source.items()}
    total = {r: 0.75 * rows["docs"][r] + 0.25 * rows["web"][r] for r in ("exact_rate", "approximate_rate")}
    report[key] = {"per_source": rows, "total": total}
  write_json(work_dir / "memorization" / "memorization.json", report)
  return report


def bar_sizes(svg, prefix):
  """{bar id suffix: (width, height)} of the bars whose SVG group id starts with ``prefix``."""
  sizes = {}
  for gid, d in re.findall(rf'<g id="{prefix}([^"]+)">\s*<path d="([^"]+)"', svg):
    xs, ys = zip(*[(float(x), float(y)) for x, y in re.findall(r"([-\d.]+) ([-\d.]+)", d)])
    sizes[gid] = (max(xs) - min(xs), max(ys) - min(ys))
  return sizes


def test_memorization_plots_show_the_rates_and_pii(work_dir):
  report_json = write_memorization(work_dir)
  page = build(work_dir)
  mem = section(page, "memorization")
  assert mem.count("<svg") == 2
  heights = {gid: h for gid, (_, h) in bar_sizes(mem, "memorization-rates-bar-").items()}
  sources = sorted(MEMORIZED["members"]) + ["total"]
  expected = {}
  for key in MEMORIZED:
    for i, source in enumerate(sources):
      part = report_json[key]["total"] if source == "total" else report_json[key]["per_source"][source]
      for rate in ("exact", "approximate"):
        expected[f"{key}-{rate}-{i}"] = part[f"{rate}_rate"]
  assert set(heights) == set(expected)  # One bar per (membership, rate, source), total included.
  scale = heights["members-approximate-0"] / expected["members-approximate-0"]
  for gid, rate in expected.items():  # Heights proportional to the rates.
    assert heights[gid] == pytest.approx(rate * scale, abs=0.05), gid
  assert heights["members-exact-0"] > heights["members-exact-1"] > heights["non_members-exact-0"] == 0
  # Members beside the control, table rows in percent.
  assert "<tr><td>docs</td><td>10</td><td>30.0%</td><td>60.0%</td><td>10</td><td>0.0%</td><td>10.0%</td></tr>" in mem
  assert "<td>total (token-weighted)</td><td>–</td><td>" in mem
  widths = {gid: w for gid, (w, _) in bar_sizes(mem, "memorization-pii-pii-").items()}
  counts = {f"{s}-{t}": n for s, types in MEMORIZED_PII.items() for t, n in types.items()}
  unit = widths[f"docs-{pii.EMAIL}"] / 3
  for gid, n in counts.items():
    assert widths[gid] == pytest.approx(n * unit, abs=0.05), gid
  assert f"<tr><td>docs</td><td>{pii.EMAIL}</td><td>3</td></tr>" in mem


def test_memorization_not_run_and_malformed(work_dir, page):
  assert "memorization/memorization.json: memorization stage not run." in section(page, "memorization")
  report_json = write_memorization(work_dir)
  report_json["members"]["per_source"]["web"]["exact_rate"] = 0.5
  write_json(work_dir / "memorization" / "memorization.json", report_json)
  with pytest.raises(report.ReportError, match=r"memorization.json: members.per_source.web: key "
                                               r"'exact_rate' is 0.5 but exact/documents is 1/8"):
    build(work_dir)
  report_json["members"]["per_source"]["web"]["exact_rate"] = 1 / 8
  del report_json["non_members"]
  write_json(work_dir / "memorization" / "memorization.json", report_json)
  with pytest.raises(report.ReportError, match="memorization.json: missing key 'non_members'"):
    build(work_dir)


def test_run_report_shows_the_memorization_plots(work_dir, tmp_path):
  from workflow import report as run_report
  write_memorization(work_dir)
  page = run_report.build(str(work_dir), str(tmp_path))
  assert page.count('<section id="memorization">') == 1
  assert section(page, "memorization").count("<svg") == 2
