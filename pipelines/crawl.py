"""Crawl job: seed URLs -> safe, polite HTTP fetches -> WARC files that ``pipelines.extract`` reads.

Usage::

  python -m pipelines.crawl --seeds=seeds.txt --output_dir=out/crawl [--max_depth=1] ...

The pipeline has one round per link depth (0 .. ``--max_depth``); Beam graphs have no loops, so the
rounds are unrolled::

  seeds ─> ParseSeed ─┐
                      ├─> CoGroupByKey on origin {urls, seen, state} ─> FetchHost ─┬─ outcomes
  links of round d-1 ─┘   (one element per origin = one politeness domain)         ├─ captures (WARC)
                                                                                    ├─ links ─> round d+1
                                                                                    └─ state ─> round d+1
  captures ─> shard count (from their bytes) ─> GroupByKey on shard ─> <prefix>.XXXXX-of-NNNNN.warc.gz
  outcomes ─> fetches-XXXXX-of-NNNNN.jsonl (one line per URL, sorted; count from the bytes), stats.json

Grouping by origin puts every request to a host into one sequential ``FetchHost`` call, which is
where politeness is enforced; different hosts are fetched in parallel on different workers. The
``seen`` input (URLs attempted in earlier rounds) makes each URL attempted at most once, and the
``state`` input carries robots.txt and the time of the last request, so robots.txt is fetched once
per origin and the delay holds across rounds.

WARC files: an origin's captures go to file ``stable_hash(origin) % N``. ``N`` is ``--num_shards``,
or with 0 (the default) ``shards_for(bytes of every capture, --target_warc_bytes)``, known once
every round has fetched: captures carry the origin's hash and their size, and get their file only
then (a side input), so every file is named ``-of-N`` with the final ``N`` and every one of them is
written (empty ones too). Files are not rolled by size as a crawler writing as it goes would: that
gives a count known only at the end, so names without ``-of-N`` and readers that cannot tell a
missing file (docs/crawl.md, WARC file count).

Two layouts of the captures (``--shard_layout``), the same files byte for byte:

* ``by_size`` (default): a capture is ``(origin hash, bytes, (url, WARC bytes))``, grouped by shard
  in a Beam shuffle, which Beam's local runner holds whole in memory: every page of the crawl.
* ``per_input``: each ``FetchHost`` call (one origin, one round) writes its captures to one spill
  file (pipelines/spill.py; one partition, 0, since the file holds one origin; key = URL, value =
  WARC bytes) and emits only ``(origin hash, bytes, spill path)``; the shard's writer streams
  ``spill.merge_partition`` over its files.
  A worker holds one origin's captures of one round (at most ``--max_pages`` pages) or one record
  per spill file, never the crawl. The order is the same: ``sorted`` over ``(url, bytes)`` tuples
  and the merge over ``(UTF-8 url, bytes)`` agree, UTF-8 byte order being code point order.
  The shard's GroupByKey fires only once every FetchHost bundle has committed, after its spill
  file was written (as in pipelines/tokenize_shardwise.py). Spill files live under the job's
  temporary output directory and go when the job succeeds.

Accounting: ``in`` counts every distinct URL that entered the frontier (seeds and in-scope links);
each gets exactly one outcome, ``kept`` (a 200 with an accepted content type, written to the WARC)
or ``dropped.<reason>``. Safety rules are in :mod:`pipelines.crawl_safety` and
:mod:`pipelines.crawl_fetch`; docs/crawl.md explains them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import html.parser
import io
import json
import logging
import urllib.parse
import uuid
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines import common, spill, text_utils
from pipelines.crawl_fetch import Exchange, FetchConfig, Fetcher, HostState
from pipelines.crawl_safety import Refused, join_url, media_type, normalize_url, origin_of

STAGE = "crawl"
FETCH_LOG_PREFIX = "fetches"
KEPT = "kept"
SPILL_DIR = "_spill"  # Under the job's temporary output directory (per_input layout only).
SPILL_PARTITION = 0  # A spill file holds one origin's captures, so one partition.
# WARC files follow the data: ~1 GiB of records each unless --num_shards is given, about the size
# of Common Crawl's WARC files (docs/dataflow.md), so one file is one worker call's write and one
# extract worker call's read (its per_input layout).
DEFAULT_TARGET_WARC_BYTES = 2**30

# Output tags of FetchHost.
OUTCOMES, CAPTURES, LINKS, STATES = "outcomes", "captures", "links", "states"

# Headers describing the transfer, not the stored bytes. As in Common Crawl, the stored payload is
# the decoded body, so these are renamed X-Crawler-<name> and Content-Length is set to its length;
# any WARC reader then gets the exact page bytes without undoing an encoding.
_TRANSFER_HEADERS = ("content-encoding", "transfer-encoding", "content-length")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclasses.dataclass(frozen=True)
class CrawlConfig:
  """Scope and output layout of a crawl; ``fetch`` holds the per-request limits."""

  fetch: FetchConfig
  allowed_hosts: frozenset[str]
  max_depth: int = 1
  max_pages: int = 1000  # Per origin: a global cap would need coordination between workers.
  same_host_only: bool = False
  num_shards: int = 0  # WARC files; 0: from the captures' bytes and target_warc_bytes.
  target_warc_bytes: int = DEFAULT_TARGET_WARC_BYTES
  num_fetch_log_shards: int = 0  # 0: from the log's bytes and target_shard_bytes.
  target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES
  warc_prefix: str = "web"
  shard_layout: str = common.BY_SIZE  # How captures reach their WARC shard (module docstring).


# ----------------------------------------------------------------------------- accounting


def _outcome(url: str, reason: str, depth: int, origin: str = "", **extra: Any) -> dict[str, Any]:
  """One line of the fetch log, counted in the Beam counters as it is made."""
  Metrics.counter(STAGE, "in").inc()
  Metrics.counter(STAGE, _stats_key(reason)).inc()
  return {"id": url, "url": url, "reason": reason, "depth": depth, "origin": origin, **extra}


class ParseSeed(beam.DoFn):
  """Normalises a seed URL and keys it by that URL; an unusable seed becomes a counted drop."""

  def process(self, seed: str):
    try:
      url = normalize_url(seed)
    except Refused as e:
      yield beam.pvalue.TaggedOutput(OUTCOMES, _outcome(seed, e.reason, 0, detail=e.detail))
      return
    except Exception as e:  # The per-element policy (docs/reliability.md).
      yield beam.pvalue.TaggedOutput(
          OUTCOMES, _outcome(seed, "bad_url", 0, detail=common.error_text(e)))
      return
    yield url, seed


def first_seed_per_url(url_and_seeds):
  """One frontier entry per normalised URL; every other seed line that spells the same URL
  (``HTTP://Example.com`` and ``http://example.com/``, or the same line twice) is counted as
  ``duplicate_seed``, naming the URL it duplicates."""
  url, seeds = url_and_seeds
  first, *others = sorted(seeds)
  yield origin_of(url), url
  for seed in others:
    yield beam.pvalue.TaggedOutput(
        OUTCOMES, _outcome(seed, "duplicate_seed", 0, detail=f"same URL as {first!r}: {url}"))


# ----------------------------------------------------------------------------- links


class _LinkParser(html.parser.HTMLParser):
  """Collects ``<a href>`` / ``<area href>`` targets, honouring ``<base>`` and nofollow."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.base: str | None = None
    self.hrefs: list[str] = []
    self.nofollow = False

  def handle_starttag(self, tag, attrs):
    attrs = {k: v or "" for k, v in attrs}
    if tag == "base" and self.base is None and attrs.get("href"):
      self.base = attrs["href"]
    elif tag == "meta" and attrs.get("name", "").lower() == "robots":
      directives = {d.strip().lower() for d in attrs.get("content", "").split(",")}
      self.nofollow |= bool(directives & {"nofollow", "none"})
    elif tag in ("a", "area") and attrs.get("href"):
      if "nofollow" not in attrs.get("rel", "").lower().split():
        self.hrefs.append(attrs["href"])


def extract_links(exchange: Exchange) -> list[str]:
  """Normalised http(s) links of an HTML page, in document order, without duplicates."""
  content_type = exchange.header("Content-Type") or ""
  if media_type(content_type) not in _HTML_TYPES:
    return []
  parser = _LinkParser()
  parser.feed(exchange.body.decode(_charset(content_type), "replace"))
  parser.close()
  if parser.nofollow:
    return []
  base = exchange.url
  if parser.base:
    try:
      base = join_url(exchange.url, parser.base)
    except Refused:
      pass  # A malformed <base href> (e.g. "http://[::1"): links resolve against the page.
  links: list[str] = []
  for href in parser.hrefs:
    try:
      link = join_url(base, href)
    except Refused:
      continue  # mailto:, javascript:, malformed: not a page to crawl.
    if link not in links:
      links.append(link)
  return links


def _charset(content_type: str) -> str:
  """The charset parameter if it names a text encoding, else UTF-8 (only used to find links)."""
  for param in content_type.split(";")[1:]:
    key, _, value = param.partition("=")
    if key.strip().lower() == "charset":
      return text_utils.text_codec(value) or "utf-8"
  return "utf-8"


# ----------------------------------------------------------------------------- WARC records


def _record_id(*parts: str) -> str:
  """A WARC-Record-ID derived from the record itself, so the same capture has the same id."""
  return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, ' '.join(parts))}>"


# Printable ASCII except "%": what stays as it is when a header field is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _ascii_field(text: str) -> str:
  """A status reason or header field as ASCII (warcio refuses anything else): a field with other
  characters (http.client reads them as Latin-1) is percent-encoded as UTF-8, RFC 8187 style."""
  return text if text.isascii() else urllib.parse.quote(text, safe=_HEADER_SAFE)


def capture_records(exchange: Exchange) -> bytes:
  """The gzipped ``request`` and ``response`` WARC records of one fetched page."""
  digest = hashlib.sha1(exchange.body).hexdigest()
  request_id = _record_id("request", exchange.url, exchange.date, digest)
  response_id = _record_id("response", exchange.url, exchange.date, digest)
  headers = [
      (_ascii_field(f"X-Crawler-{name}" if name.lower() in _TRANSFER_HEADERS else name),
       _ascii_field(value))
      for name, value in exchange.headers
  ] + [("Content-Length", str(len(exchange.body)))]
  out = io.BytesIO()
  writer = WARCWriter(out, gzip=True)
  common_headers = {"WARC-Date": exchange.date, "WARC-IP-Address": exchange.ip}
  request = writer.create_warc_record(
      exchange.url,
      "request",
      payload=io.BytesIO(b""),
      length=0,
      http_headers=StatusAndHeaders(
          exchange.request_line, exchange.request_headers, is_http_request=True
      ),
      warc_headers_dict={
          **common_headers, "WARC-Record-ID": request_id, "WARC-Concurrent-To": response_id
      },
  )
  response = writer.create_warc_record(
      exchange.url,
      "response",
      payload=io.BytesIO(exchange.body),
      length=len(exchange.body),
      http_headers=StatusAndHeaders(
          f"{exchange.status} {_ascii_field(exchange.reason)}", headers,
          protocol=exchange.http_version,
      ),
      warc_headers_dict={
          **common_headers, "WARC-Record-ID": response_id, "WARC-Concurrent-To": request_id
      },
  )
  writer.write_record(request)
  writer.write_record(response)
  return out.getvalue()


# WARC file names: <prefix><WARC_SEP>XXXXX-of-NNNNN.<WARC_EXT>; warc_path writes them, warc_files
# reads them (common.check_shards_complete with sep=WARC_SEP).
WARC_SEP = "."
WARC_EXT = "warc.gz"


def warc_path(directory: str, prefix: str, shard: int, num_shards: int) -> str:
  """``<prefix>.XXXXX-of-NNNNN.warc.gz``: extract takes the source name up to the first dot."""
  return FileSystems.join(
      directory, f"{prefix}{WARC_SEP}{shard:05d}-of-{num_shards:05d}.{WARC_EXT}")


def write_warc(path: str, config: CrawlConfig, records: Iterable[bytes]) -> str:
  """Writes one WARC file: a ``warcinfo`` record, then ``records`` (each capture's gzipped
  request + response records) in the order given, streamed. The one writer of both layouts."""
  filename = path.rsplit("/", 1)[-1]
  out = io.BytesIO()
  writer = WARCWriter(out, gzip=True)
  info = writer.create_warcinfo_record(
      filename,
      {
          "software": "gemma-forge pipelines.crawl",
          "format": "WARC File Format 1.0",
          "robots": "obey",
          "http-header-user-agent": config.fetch.user_agent,
          "isPartOf": config.warc_prefix,
      },
  )
  date = info.rec_headers.get_header("WARC-Date")
  info.rec_headers.replace_header("WARC-Record-ID", _record_id("warcinfo", filename, date))
  writer.write_record(info)
  # UNCOMPRESSED: the records are gzipped one by one already; AUTO would gzip the file again.
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(out.getvalue())
    for record in records:
      f.write(record)
  return path


class WriteWarcShard(beam.DoFn):
  """``(shard, items)`` and the shard count -> the shard's WARC file, captures sorted by (URL, bytes).

  ``by_size``: the items are ``(url, bytes)`` captures, sorted here. ``per_input``: they are the
  paths of the spill files holding the shard's captures, merged in the same order; every one is
  checked against its index first, so a missing or truncated spill file is a ``spill.SpillError``
  that fails the job, not a short WARC file. A ``None`` item (every shard gets one) makes empty
  shards be written too.
  """

  def __init__(self, directory: str, config: CrawlConfig):
    self._directory = directory
    self._config = config

  def process(self, element, num_shards: int):
    shard, items = element
    items = [item for item in items if item is not None]
    path = warc_path(self._directory, self._config.warc_prefix, shard, num_shards)
    if self._config.shard_layout == common.PER_INPUT:
      captures = spill.merge_partition(sorted(set(items)), SPILL_PARTITION)
    else:
      captures = iter(sorted(items))
    yield write_warc(path, self._config, (records for _, records in captures))


def spill_path(spill_dir: str, depth: int, origin: str) -> str:
  """The spill file of one ``FetchHost`` call: one per (round, origin), the same on a retry."""
  return FileSystems.join(spill_dir, f"depth{depth:03d}-{common.stable_hash(origin):016x}")


def delete_spills(directory: str) -> None:
  """Removes ``<directory>/_spill`` and its files once the job succeeded (a failed job's
  temporary directory goes whole). Matched, not listed: only the workers knew the names."""
  spill_dir = FileSystems.join(directory, SPILL_DIR)
  files = [m.path for m in FileSystems.match([FileSystems.join(spill_dir, "*")])[0].metadata_list]
  if files:
    FileSystems.delete(files)
  if FileSystems.exists(spill_dir):
    FileSystems.delete([spill_dir])


# ----------------------------------------------------------------------------- fetching


class FetchHost(beam.DoFn):
  """Fetches the new URLs of one origin, in order, one request at a time.

  Input: ``(origin, {"urls": [...], "seen": [(url, counted)], "state": [HostState]})``; ``seen``
  and ``urls`` hold one origin's URLs, at most ``--max_pages`` attempted ones.
  Outputs: outcomes (main), captures, links ``(origin, url)`` for the next round, and the
  origin's ``HostState``. Captures are ``(origin hash, bytes, (url, warc bytes))``, or with
  ``spill_dir`` (the per_input layout) one ``(origin hash, bytes, spill path)`` per call: the call's
  captures are held until it ends (one origin's pages of one round, bounded by ``--max_pages``;
  ``spill.write`` takes them as one list, since it sorts them) and written to one spill file,
  :func:`spill_path`. ``bytes`` is the captures' WARC bytes in both layouts, what sizes the
  WARC files (so both layouts choose the same count).
  """

  def __init__(self, config: CrawlConfig, depth: int, spill_dir: str | None = None):
    self._config = config
    self._depth = depth
    self._spill_dir = spill_dir

  def process(self, element):
    origin, groups = element
    seen = dict(groups["seen"])
    new_urls = sorted(set(groups["urls"]) - seen.keys())
    if not new_urls:
      return
    states = sorted(groups["state"], key=lambda s: s.last_request_at)
    fetcher = Fetcher(self._config.fetch, {origin: states[-1]} if states else None)
    budget = self._config.max_pages - sum(seen.values())
    rows: list[spill.Row] = []  # The per_input layout's captures: (partition, url, warc bytes).
    for url in new_urls:
      if budget <= 0:
        yield _outcome(url, "max_pages", self._depth, origin)
        continue
      budget -= 1
      for output in self._fetch_one(fetcher, url, origin):
        if self._spill_dir is not None and getattr(output, "tag", None) == CAPTURES:
          _, _, (final_url, records) = output.value
          rows.append((SPILL_PARTITION, final_url.encode("utf-8"), records))
        else:
          yield output
    if rows:
      path = spill_path(self._spill_dir, self._depth, origin)
      size = sum(len(records) for _, _, records in rows)
      spill.write(path, rows)
      del rows
      yield beam.pvalue.TaggedOutput(CAPTURES, (common.stable_hash(origin), size, path))
    if origin in fetcher.robots:
      state = HostState(fetcher.robots[origin], fetcher.last_request_at.get(origin, 0.0))
      yield beam.pvalue.TaggedOutput(STATES, (origin, state))

  def _fetch_one(self, fetcher: Fetcher, url: str, origin: str) -> list:
    """The outputs for one URL: its outcome, and if kept its capture and in-scope links.

    Per-element policy (docs/reliability.md): a failure on this URL that is not a Refused
    (a bug, a response no check foresaw) is its ``fetch_error`` outcome; the origin's other URLs
    and the job go on.
    """
    try:
      exchange = fetcher.fetch(url)
      capture = capture_records(exchange)
      links = extract_links(exchange) if self._depth < self._config.max_depth else []
      links = [link for link in links if self._in_scope(link, exchange.url)]
    except Refused as e:
      return [_outcome(url, e.reason, self._depth, origin, detail=e.detail)]
    except common.JOB_ERRORS:
      raise
    except Exception as e:  # pylint: disable=broad-except
      return [_outcome(url, "fetch_error", self._depth, origin, detail=common.error_text(e))]
    return [
        _outcome(url, KEPT, self._depth, origin, final_url=exchange.url, bytes=len(exchange.body)),
        beam.pvalue.TaggedOutput(
            CAPTURES, (common.stable_hash(origin), len(capture), (exchange.url, capture))),
        *(beam.pvalue.TaggedOutput(LINKS, (origin_of(link), link)) for link in links),
    ]

  def _in_scope(self, link: str, page_url: str) -> bool:
    host = urllib.parse.urlsplit(link).hostname
    if self._config.same_host_only:
      return host == urllib.parse.urlsplit(page_url).hostname
    return host in self._config.allowed_hosts


def _seen_entry(outcome: dict[str, Any]) -> tuple[str, tuple[str, bool]]:
  """(origin, (url, counts against max_pages)) for the next rounds' dedup and budget."""
  return outcome["origin"], (outcome["url"], outcome["reason"] != "max_pages")


def crawl(seeds: beam.PCollection, config: CrawlConfig, spill_dir: str | None = None):
  """The crawl as a graph: seed URL strings -> (outcomes, captures) PCollections.

  ``spill_dir``: where the per_input layout's ``FetchHost`` calls write their spill files (it must
  exist; :func:`run` makes ``<tmp output dir>/_spill``).
  """
  per_input = config.shard_layout == common.PER_INPUT
  if per_input and spill_dir is None:
    raise common.StageError(f"--shard_layout={common.PER_INPUT} needs a spill directory.")
  p = seeds.pipeline
  parsed = seeds | "ParseSeeds" >> beam.ParDo(ParseSeed()).with_outputs(OUTCOMES, main="urls")
  unique = (
      parsed.urls
      | "GroupSeedsByUrl" >> beam.GroupByKey()
      | "FirstSeedPerUrl" >> beam.ParDo(first_seed_per_url).with_outputs(OUTCOMES, main="urls")
  )
  frontier = unique.urls
  seen = p | "NoSeen" >> beam.Create([])
  states = p | "NoState" >> beam.Create([])
  outcomes, captures = [parsed[OUTCOMES], unique[OUTCOMES]], []
  for depth in range(config.max_depth + 1):
    step = f"Depth{depth}"
    fetched = (
        {"urls": frontier, "seen": seen, "state": states}
        | f"{step}/GroupByOrigin" >> beam.CoGroupByKey()
        | f"{step}/FetchHost"
        >> beam.ParDo(FetchHost(config, depth, spill_dir if per_input else None))
        .with_outputs(CAPTURES, LINKS, STATES, main=OUTCOMES)
    )
    outcomes.append(fetched[OUTCOMES])
    captures.append(fetched[CAPTURES])
    seen = (seen, fetched[OUTCOMES] | f"{step}/Seen" >> beam.Map(_seen_entry)) | (
        f"{step}/AllSeen" >> beam.Flatten()
    )
    states = (states, fetched[STATES]) | f"{step}/AllStates" >> beam.Flatten()
    frontier = fetched[LINKS]
  return (
      outcomes | "AllOutcomes" >> beam.Flatten(),
      captures | "AllCaptures" >> beam.Flatten(),
  )


# ----------------------------------------------------------------------------- output


def _stats_key(reason: str) -> str:
  return KEPT if reason == KEPT else f"dropped.{reason}"


def _write_stats(directory: str, items: Iterable[tuple[str, int]]) -> dict[str, Any]:
  stats = common.make_stats(STAGE, items)
  with FileSystems.create(FileSystems.join(directory, common.STATS_FILE)) as f:
    f.write((json.dumps(stats, sort_keys=True, indent=2) + "\n").encode("utf-8"))
  return stats


def warc_shard_count(captures, config: CrawlConfig):
  """The number of WARC files, a one-element PCollection: ``--num_shards``, or from the bytes of
  every capture (``common.shards_for`` with ``--target_warc_bytes``)."""
  return captures | "WarcCount" >> common.ShardCount(
      config.num_shards, config.target_warc_bytes, lambda capture: capture[1])


def write_outputs(outcomes, captures, directory: str, config: CrawlConfig) -> None:
  """WARC shards (empty ones too, so the file set depends only on the count), log and stats.

  Memory: ``GroupByShard`` holds every capture in the by_size layout and only spill paths in the
  per_input one. The fetch log's ``WriteSortedShards`` groups one line per attempted URL (a few
  hundred bytes each, not the pages) by its shard in both layouts; the counts are combined.
  """
  count = warc_shard_count(captures, config)
  num_shards = beam.pvalue.AsSingleton(count)
  keyed = captures | "KeyByShard" >> beam.Map(
      lambda capture, n: (capture[0] % n, capture[2]), num_shards)
  empty = count | "AllShards" >> beam.FlatMap(lambda n: [(i, None) for i in range(n)])
  _ = (
      (keyed, empty)
      | "FlattenShards" >> beam.Flatten()
      | "GroupByShard" >> beam.GroupByKey()
      | "WriteWarc" >> beam.ParDo(WriteWarcShard(directory, config), num_shards)
  )
  _ = outcomes | "WriteLog" >> common.WriteSortedShards(
      directory, FETCH_LOG_PREFIX, config.num_fetch_log_shards, config.target_shard_bytes)
  counts = [
      outcomes
      | "CountIn" >> beam.combiners.Count.Globally()
      | "TagIn" >> beam.Map(lambda n: ("in", n)),
      outcomes
      | "Reason" >> beam.Map(lambda o: (_stats_key(o["reason"]), 1))
      | "CountReasons" >> beam.CombinePerKey(sum),
  ]
  _ = (
      counts
      | "FlattenCounts" >> beam.Flatten()
      | "AllCounts" >> beam.combiners.ToList()
      | "WriteStats" >> beam.Map(lambda items: _write_stats(directory, items))
  )


def fetch_log_pattern(directory: str) -> str:
  """The glob of a crawl directory's fetch log shards (``common.shard_path`` names)."""
  return FileSystems.join(directory, f"{FETCH_LOG_PREFIX}-*.jsonl")


def _finished_shards(directory: str, pattern: str, what: str, sep: str = "-") -> list[str]:
  """The files of a finished crawl that match ``pattern``, sorted; StageError unless the crawl
  finished (its ``_SUCCESS`` marker), some match and every shard their ``-of-NNNNN`` promises is
  there."""
  if not FileSystems.exists(FileSystems.join(directory, common.SUCCESS_MARKER)):
    raise common.StageError(f"{directory} has no {common.SUCCESS_MARKER} marker: the crawl did "
                            "not finish.")
  files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if not files:
    raise common.StageError(f"{directory}: no {what} ({pattern}).")
  common.check_shards_complete(files, f"{directory} {what}", sep=sep)
  return files


def fetch_log_files(directory: str) -> list[str]:
  """Every shard of a finished crawl's fetch log, sorted; refused (StageError) unless the crawl
  finished (``_SUCCESS``) and every shard its ``-of-NNNNN`` promises is there."""
  directory = directory.rstrip("/")
  return _finished_shards(directory, fetch_log_pattern(directory), "fetch log")


def warc_files(directory: str) -> list[str]:
  """Every WARC file of a finished crawl, sorted; refused (StageError) unless the crawl finished,
  every file its ``-of-NNNNN`` promises is there and none is past that count, and all are of one
  prefix (what extract reads a crawl with)."""
  directory = directory.rstrip("/")
  files = _finished_shards(directory, FileSystems.join(directory, f"*.{WARC_EXT}"), "WARC files",
                           sep=WARC_SEP)
  prefixes = sorted({path.rsplit("/", 1)[-1].split(WARC_SEP, 1)[0] for path in files})
  if len(prefixes) != 1:
    raise common.StageError(f"{directory}: WARC files of several crawls (prefixes {prefixes}).")
  return files


def read_fetch_log(directory: str) -> Iterable[dict[str, Any]]:
  """The fetch log's records, shard by shard (each sorted by URL), streamed."""
  for path in fetch_log_files(directory):
    with FileSystems.open(path) as f:
      for line in f:
        yield json.loads(line)


# ----------------------------------------------------------------------------- command line


def read_seeds(path: str) -> list[str]:
  """Seed URLs, one per line; blank lines and ``#`` comments are skipped. Duplicates are kept
  here: the job counts each as ``duplicate_seed``."""
  with FileSystems.open(path) as f:
    data = f.read()
  try:
    lines = data.decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise common.StageError(f"{path} is not UTF-8 text: {e}") from None
  seeds = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
  if not seeds:
    raise common.StageError(f"{path} holds no seed URLs.")
  return seeds


def seed_hosts(seeds: Iterable[str]) -> frozenset[str]:
  hosts = set()
  for seed in seeds:
    try:
      hosts.add(urllib.parse.urlsplit(normalize_url(seed)).hostname)
    except Exception:  # pylint: disable=broad-except
      pass  # Counted as a drop by ParseSeed.
  return frozenset(hosts)


def _add_flags(parser: argparse.ArgumentParser) -> None:
  defaults = FetchConfig()
  parser.add_argument("--seeds", required=True, help="File of seed URLs, one per line.")
  parser.add_argument("--output_dir", required=True, help="Directory the job writes.")
  parser.add_argument("--max_depth", type=int, default=1, help="Link hops followed from seeds.")
  parser.add_argument("--max_pages", type=int, default=1000, help="Most URLs attempted per origin.")
  parser.add_argument(
      "--allowed_hosts", default="", help="Comma-separated hosts whose links are followed "
      "(default: the seeds' hosts)."
  )
  parser.add_argument(
      "--same_host_only", action="store_true", help="Follow links on the page's own host only."
  )
  parser.add_argument(
      "--num_shards", type=int, default=0,
      help="Number of WARC files (default 0: from the captures' bytes, see --target_warc_bytes).")
  parser.add_argument(
      "--target_warc_bytes", type=int, default=DEFAULT_TARGET_WARC_BYTES,
      help="Bytes of WARC records per file when the file count comes from the data.")
  parser.add_argument(
      "--num_fetch_log_shards", type=int, default=0,
      help="Number of fetch log shards (default 0: from the log's bytes, see --target_shard_bytes).")
  parser.add_argument(
      "--target_shard_bytes", type=int, default=common.DEFAULT_TARGET_SHARD_BYTES,
      help="Bytes of JSON per fetch log shard when the shard count comes from the data.")
  parser.add_argument(
      "--warc_prefix", default="web", help="WARC file name prefix (= extract's source name)."
  )
  parser.add_argument(
      "--shard_layout", choices=common.SHARD_LAYOUTS, default=common.BY_SIZE,
      help=f"{common.BY_SIZE}: captures shuffled to their WARC shard by Beam (held in memory by "
      f"a local run). {common.PER_INPUT}: each origin's captures go through one spill file, so a "
      "local run's memory does not grow with the crawl; the same files either way.",
  )
  parser.add_argument(
      "--allow_private_addresses", action="store_true",
      help="Allow loopback/private/link-local targets (intranet crawls only).",
  )
  parser.add_argument(
      "--allow_loopback", action="store_true",
      help="Allow 127.0.0.0/8 and ::1 only (a server on this machine: tests, local use); every "
      "other private range stays refused.",
  )
  parser.add_argument("--user_agent", default=defaults.user_agent)
  for name in (
      "connect_timeout", "read_timeout", "total_timeout", "max_decompression_ratio", "backoff",
      "max_retry_after", "min_delay", "max_crawl_delay",
  ):
    parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
  for name in ("max_body_bytes", "max_robots_bytes", "max_redirects", "max_retries"):
    parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
  parser.add_argument(
      "--content_types", default=",".join(defaults.content_types),
      help="Comma-separated media types that are kept.",
  )


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  _add_flags(parser)
  args, beam_args = parser.parse_known_args(argv)
  return args, PipelineOptions(beam_args)


def config_from_args(args: argparse.Namespace, seeds: Sequence[str]) -> CrawlConfig:
  """Builds the config, refusing values that would make the crawl unbounded or impolite."""
  for name in ("max_depth", "max_redirects", "max_retries", "min_delay", "backoff", "num_shards",
               "num_fetch_log_shards"):
    if getattr(args, name) < 0:
      raise common.StageError(f"--{name} must not be negative, got {getattr(args, name)}.")
  for name in ("max_pages", "target_warc_bytes", "target_shard_bytes", "max_body_bytes",
               "max_robots_bytes", "connect_timeout", "read_timeout", "total_timeout",
               "max_decompression_ratio"):
    if getattr(args, name) <= 0:
      raise common.StageError(f"--{name} must be positive, got {getattr(args, name)}.")
  if "." in args.warc_prefix or "/" in args.warc_prefix or not args.warc_prefix:
    raise common.StageError(
        f"--warc_prefix must be a plain name without dots, got {args.warc_prefix!r}."
    )
  fetch = FetchConfig(
      user_agent=args.user_agent,
      allow_private_addresses=args.allow_private_addresses,
      allow_loopback=args.allow_loopback,
      connect_timeout=args.connect_timeout,
      read_timeout=args.read_timeout,
      total_timeout=args.total_timeout,
      max_body_bytes=args.max_body_bytes,
      max_decompression_ratio=args.max_decompression_ratio,
      max_robots_bytes=args.max_robots_bytes,
      max_redirects=args.max_redirects,
      max_retries=args.max_retries,
      backoff=args.backoff,
      max_retry_after=args.max_retry_after,
      min_delay=args.min_delay,
      max_crawl_delay=args.max_crawl_delay,
      content_types=tuple(t.strip().lower() for t in args.content_types.split(",") if t.strip()),
  )
  allowed = {h.strip().lower() for h in args.allowed_hosts.split(",") if h.strip()}
  return CrawlConfig(
      fetch=fetch,
      allowed_hosts=frozenset(allowed) or seed_hosts(seeds),
      max_depth=args.max_depth,
      max_pages=args.max_pages,
      same_host_only=args.same_host_only,
      num_shards=args.num_shards,
      target_warc_bytes=args.target_warc_bytes,
      num_fetch_log_shards=args.num_fetch_log_shards,
      target_shard_bytes=args.target_shard_bytes,
      warc_prefix=args.warc_prefix,
      shard_layout=args.shard_layout,
  )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the crawl; returns the stats written to ``<output_dir>/stats.json``."""
  args, options = parse_args(argv)
  seeds = read_seeds(args.seeds)
  config = config_from_args(args, seeds)
  logging.info("crawl: %d seeds -> %s", len(seeds), args.output_dir)
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    spill_dir = FileSystems.join(tmp_dir, SPILL_DIR)
    if config.shard_layout == common.PER_INPUT:
      FileSystems.mkdirs(spill_dir)
    with beam.Pipeline(options=options) as p:
      outcomes, captures = crawl(p | "Seeds" >> beam.Create(seeds), config, spill_dir)
      write_outputs(outcomes, captures, tmp_dir, config)
    delete_spills(tmp_dir)  # Only once the job succeeded: a failed one's tmp_dir goes whole.
  stats = common.read_stats(args.output_dir)
  logging.info("crawl: %s", json.dumps(stats, sort_keys=True))
  return stats


main = run  # The entry point's name in every other stage (benchmarks/stage_memory.py calls it).


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  run()
