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
  captures ─> GroupByKey on shard ─> <prefix>.XXXXX-of-NNNNN.warc.gz
  outcomes ─> fetches-00000-of-00001.jsonl (one line per URL, sorted) and stats.json

Grouping by origin puts every request to a host into one sequential ``FetchHost`` call, which is
where politeness is enforced; different hosts are fetched in parallel on different workers. The
``seen`` input (URLs attempted in earlier rounds) makes each URL attempted at most once, and the
``state`` input carries robots.txt and the time of the last request, so robots.txt is fetched once
per origin and the delay holds across rounds.

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

from pipelines import common, text_utils
from pipelines.crawl_fetch import Exchange, FetchConfig, Fetcher, HostState
from pipelines.crawl_safety import Refused, join_url, media_type, normalize_url, origin_of

STAGE = "crawl"
FETCH_LOG_PREFIX = "fetches"
KEPT = "kept"

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
  num_shards: int = 1
  warc_prefix: str = "web"


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


def warc_path(directory: str, prefix: str, shard: int, num_shards: int) -> str:
  """``<prefix>.XXXXX-of-NNNNN.warc.gz``: extract takes the source name up to the first dot."""
  return FileSystems.join(directory, f"{prefix}.{shard:05d}-of-{num_shards:05d}.warc.gz")


class WriteWarcShard(beam.DoFn):
  """Writes one WARC file: a ``warcinfo`` record, then the shard's captures sorted by URL."""

  def __init__(self, directory: str, config: CrawlConfig):
    self._directory = directory
    self._config = config

  def process(self, element):
    shard, captures = element
    path = warc_path(self._directory, self._config.warc_prefix, shard, self._config.num_shards)
    filename = path.rsplit("/", 1)[-1]
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    info = writer.create_warcinfo_record(
        filename,
        {
            "software": "gemma-forge pipelines.crawl",
            "format": "WARC File Format 1.0",
            "robots": "obey",
            "http-header-user-agent": self._config.fetch.user_agent,
            "isPartOf": self._config.warc_prefix,
        },
    )
    date = info.rec_headers.get_header("WARC-Date")
    info.rec_headers.replace_header("WARC-Record-ID", _record_id("warcinfo", filename, date))
    writer.write_record(info)
    # UNCOMPRESSED: the records are gzipped one by one already; AUTO would gzip the file again.
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      f.write(out.getvalue())
      for _, records in sorted(c for c in captures if c is not None):
        f.write(records)
    yield path


# ----------------------------------------------------------------------------- fetching


class FetchHost(beam.DoFn):
  """Fetches the new URLs of one origin, in order, one request at a time.

  Input: ``(origin, {"urls": [...], "seen": [(url, counted)], "state": [HostState]})``.
  Outputs: outcomes (main), captures ``(shard, (url, warc bytes))``, links ``(origin, url)`` for
  the next round, and the origin's ``HostState``.
  """

  def __init__(self, config: CrawlConfig, depth: int):
    self._config = config
    self._depth = depth

  def process(self, element):
    origin, groups = element
    seen = dict(groups["seen"])
    new_urls = sorted(set(groups["urls"]) - seen.keys())
    if not new_urls:
      return
    states = sorted(groups["state"], key=lambda s: s.last_request_at)
    fetcher = Fetcher(self._config.fetch, {origin: states[-1]} if states else None)
    budget = self._config.max_pages - sum(seen.values())
    for url in new_urls:
      if budget <= 0:
        yield _outcome(url, "max_pages", self._depth, origin)
        continue
      budget -= 1
      yield from self._fetch_one(fetcher, url, origin)
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
    shard = common.stable_hash(origin) % self._config.num_shards
    return [
        _outcome(url, KEPT, self._depth, origin, final_url=exchange.url, bytes=len(exchange.body)),
        beam.pvalue.TaggedOutput(CAPTURES, (shard, (exchange.url, capture))),
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


def crawl(seeds: beam.PCollection, config: CrawlConfig):
  """The crawl as a graph: seed URL strings -> (outcomes, captures) PCollections."""
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
        >> beam.ParDo(FetchHost(config, depth)).with_outputs(CAPTURES, LINKS, STATES, main=OUTCOMES)
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


def write_outputs(outcomes, captures, directory: str, config: CrawlConfig) -> None:
  """WARC shards (empty ones too, so the file set depends only on num_shards), log and stats."""
  p = outcomes.pipeline
  empty = p | "AllShards" >> beam.Create([(i, None) for i in range(config.num_shards)])
  _ = (
      (captures, empty)
      | "FlattenShards" >> beam.Flatten()
      | "GroupByShard" >> beam.GroupByKey()
      | "WriteWarc" >> beam.ParDo(WriteWarcShard(directory, config))
  )
  _ = outcomes | "WriteLog" >> common.WriteSortedShards(directory, FETCH_LOG_PREFIX, 1)
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
  parser.add_argument("--num_shards", type=int, default=1, help="Number of WARC files.")
  parser.add_argument(
      "--warc_prefix", default="web", help="WARC file name prefix (= extract's source name)."
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
  for name in ("max_depth", "max_redirects", "max_retries", "min_delay", "backoff"):
    if getattr(args, name) < 0:
      raise common.StageError(f"--{name} must not be negative, got {getattr(args, name)}.")
  for name in ("max_pages", "num_shards", "max_body_bytes", "max_robots_bytes", "connect_timeout",
               "read_timeout", "total_timeout", "max_decompression_ratio"):
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
      warc_prefix=args.warc_prefix,
  )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the crawl; returns the stats written to ``<output_dir>/stats.json``."""
  args, options = parse_args(argv)
  seeds = read_seeds(args.seeds)
  config = config_from_args(args, seeds)
  logging.info("crawl: %d seeds -> %s", len(seeds), args.output_dir)
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    with beam.Pipeline(options=options) as p:
      outcomes, captures = crawl(p | "Seeds" >> beam.Create(seeds), config)
      write_outputs(outcomes, captures, tmp_dir, config)
  stats = common.read_stats(args.output_dir)
  logging.info("crawl: %s", json.dumps(stats, sort_keys=True))
  return stats


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  run()
