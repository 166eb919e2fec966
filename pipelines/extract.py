"""WARC files -> documents: HTML to clean text, charset repair, URL normalisation, language id.

Every WARC record entering the job is counted. ``response`` records (HTML pages) go through
HTTP status and content-type checks, charset decoding and trafilatura; ``conversion`` records (the
text records of Common Crawl WET files) are already text. Everything else (``request``,
``warcinfo``, ``metadata``, ``revisit``, ...) is dropped as ``non_response_record``.

Tag, then filter: :class:`ExtractText` attaches ``lang``/``lang_score`` to every document it
could extract, and :class:`ApplyLanguageFilter` applies the ``--languages``/``--min_lang_score``
thresholds of :class:`ExtractConfig`.

    python -m pipelines.extract --input='data/sample/*.warc.gz' --output_dir=out/extract
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading
import unicodedata
import urllib.parse
import zlib
from typing import Any

import apache_beam as beam
import charset_normalizer
import courlan
import lxml.etree
import lxml.html
import trafilatura
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from py3langid.langid import MODEL_FILE, LanguageIdentifier
from warcio.archiveiterator import ArchiveIterator
from warcio.recordloader import ArcWarcRecordLoader

from pipelines import common, crawl, shardwise, text_utils
from pipelines.quality import add_config_flags, config_from_args

STAGE = "extract"
TEXT_RECORD_TYPES = ("response", "conversion")
HTML_TYPES = ("text/html", "application/xhtml+xml")
# WHATWG encoding rules: pages labelled latin-1 or ASCII are decoded as windows-1252.
_CHARSET_ALIASES = {"latin_1": "cp1252", "iso8859-1": "cp1252", "ascii": "cp1252"}
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)
# How much more "mess" than the best guess windows-1252 may show and still be chosen.
_CP1252_MARGIN = 0.15
_WHITESPACE_RE = re.compile(r"\s+")
_PRESERVE_WHITESPACE_TAGS = frozenset(["pre", "textarea"])


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
  """Extraction limits and language thresholds; every field is also a flag."""

  # Comma-separated ISO 639-1 codes to keep; empty keeps every language.
  languages: str = "en"
  # py3langid's normalised probability of the detected language.
  min_lang_score: float = 0.5
  # Wall-clock budget for one page's HTML-to-text conversion.
  extract_timeout_s: float = 10.0
  # Larger HTML bodies are dropped as page_too_large before parsing: lxml silently empties text
  # nodes over 10 MB and trafilatura needs seconds per megabyte, so a bigger page would come out
  # as empty_text or extract_timeout, hiding the real cause. (Common Crawl truncates at 1 MiB;
  # pipelines.crawl at its --max_body_bytes, 2 MiB by default.)
  max_html_bytes: int = 5_000_000


class ExtractTimeout(Exception):
  pass


# ----------------------------------------------------------------------------- pure helpers


def doc_id(target_uri: str, record_id: str) -> str:
  return hashlib.sha1(f"{target_uri}\n{record_id}".encode("utf-8")).hexdigest()[:16]


def source_name(path: str) -> str:
  """``data/sample/web.warc.gz`` -> ``web``."""
  return path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]


def normalize_url(url: str) -> str:
  """Lowercase scheme and host, no default port, sorted query without tracking parameters
  (courlan), and no fragment."""
  url = url.strip().strip("<>")
  try:
    url = courlan.normalize_url(url)
  except ValueError:
    pass  # Keep the URL as given; it is still an identifier.
  try:
    return urllib.parse.urlsplit(url)._replace(fragment="").geturl()
  except ValueError:  # A malformed IPv6 host ("http://[::1/"): still an identifier as given.
    return url.split("#", 1)[0]


def is_html(content_type: str, body: bytes) -> bool:
  mime = content_type.split(";", 1)[0].strip().lower()
  if mime:
    return mime in HTML_TYPES
  head = body[:1024].lstrip().lower()
  return head.startswith((b"<!doctype html", b"<html"))


def _codec(name: str) -> str | None:
  codec = text_utils.text_codec(name)
  return _CHARSET_ALIASES.get(codec, codec) if codec else None


def declared_charsets(content_type: str, body: bytes) -> list[str]:
  """Codecs named by the HTTP ``Content-Type`` header, then by a ``<meta>`` tag (known ones only)."""
  names = []
  for part in content_type.split(";")[1:]:
    key, _, value = part.partition("=")
    if key.strip().lower() == "charset":
      names.append(value)
  match = _META_CHARSET_RE.search(body[:4096])
  if match:
    names.append(match.group(1).decode("ascii"))
  codecs_ = [_codec(n) for n in names]
  return list(dict.fromkeys(c for c in codecs_ if c))


def decode_html(body: bytes, content_type: str) -> tuple[str, str] | None:
  """``(text, codec)`` or None if no codec decodes the page.

  Valid UTF-8 wins even over a declared charset: a byte string with non-ASCII characters that
  decodes as UTF-8 is practically never in another encoding, and "declared latin-1, served UTF-8"
  is the commonest cause of mojibake. Then the declared charsets (HTTP header, then ``<meta>``)
  are tried strictly, then charset_normalizer's detection.

  On short pages detection is unsure: several single-byte codecs decode about equally cleanly
  (cp1252 and cp1257 differ only in a few accented letters). windows-1252, the most common legacy
  web encoding and the WHATWG fallback, is chosen when its "mess" (charset_normalizer's chaos
  ratio) is within ``_CP1252_MARGIN`` of the best guess.
  """
  for codec in ["utf-8"] + declared_charsets(content_type, body):
    try:
      return _writable(body.decode(codec)), codec
    except (UnicodeError, ValueError):
      continue
  matches = charset_normalizer.from_bytes(body)
  best = matches.best()
  if best is None:
    return None
  try:
    for match in matches:
      if match.encoding == "cp1252" and match.chaos <= best.chaos + _CP1252_MARGIN:
        return _writable(str(match)), match.encoding
    return _writable(str(best)), best.encoding
  except (UnicodeError, ValueError):
    return None


def _writable(text: str) -> str:
  """``text`` if it can be written as UTF-8; raises UnicodeEncodeError on a lone surrogate
  (utf-16 and other decoders can produce one from some byte sequences)."""
  text.encode("utf-8")
  return text


def _collapse_whitespace(tree) -> None:
  """Collapses whitespace runs outside ``<pre>`` as a browser renders them, so that a paragraph
  that is line-wrapped in the HTML source becomes one line of text."""
  for element in tree.iter():
    in_pre = any(a.tag in _PRESERVE_WHITESPACE_TAGS for a in element.iterancestors())
    if isinstance(element.tag, str) and element.text and not (
        in_pre or element.tag in _PRESERVE_WHITESPACE_TAGS):
      element.text = _WHITESPACE_RE.sub(" ", element.text)
    if element.tail and not in_pre:
      element.tail = _WHITESPACE_RE.sub(" ", element.tail)


# Inline markup whose text belongs to the surrounding paragraph. trafilatura trims the text
# around such children (``management of <code>crontab</code> files`` came out as
# "management ofcrontab files") and drops text between nested ones (``<code><em>x</em></code>``);
# the stage writes plain text (include_formatting=False), so unwrapping them loses nothing.
# ``<a>`` stays: trafilatura's link-density test is what removes navigation lists.
INLINE_TAGS = ("abbr", "acronym", "b", "bdi", "bdo", "big", "cite", "code", "data", "del", "dfn",
               "em", "font", "i", "ins", "kbd", "mark", "q", "s", "samp", "small", "span",
               "strike", "strong", "sub", "sup", "time", "tt", "u", "var")
# DocBook admonitions and sidebars (TIP, NOTE, CAUTION boxes): main text that trafilatura's
# boilerplate rules drop for their class names ("sidebar", "note", ...). Only pages that a
# DocBook toolchain generated get them renamed, since on other sites such classes usually are
# boilerplate.
DOCBOOK_ASIDE_CLASSES = frozenset(["sidebar", "note", "tip", "warning", "important", "caution"])
_DOCBOOK_GENERATORS = ("docbook", "publican")
# Navigation that is never main text: removed before trafilatura, because its fallback (taken
# when the main text is short, e.g. a two-paragraph Chinese page of the Debian handbook: fewer
# characters than trafilatura's minimum) keeps the whole body, navigation lists included.
# ``<nav>`` and role=navigation everywhere; DocBook/Publican's own classes and ids on its pages.
DOCBOOK_NAV_CLASSES = frozenset(["docnav", "navheader", "navfooter"])
DOCBOOK_NAV_IDS = frozenset(["banner"])
# Format characters trafilatura deletes as "non-printable" that are part of the spelling:
# ZERO WIDTH NON-JOINER (Persian ``می‌خواست``, Indic scripts) and ZERO WIDTH JOINER (emoji
# sequences). They are swapped for printable stand-ins absent from the page, then restored.
_KEPT_FORMAT_CHARS = ("\u200c", "\u200d")
_STAND_IN_CANDIDATES = "\u2b1a\u2b1b\u2b1c\u2b1d\u2b1e\u2b1f\u2b20\u2b21\u2b22\u2b23"


def is_docbook(tree) -> bool:
  """True for pages generated from DocBook (DocBook XSL, Publican): their ``<meta generator>``."""
  for meta in tree.iter("meta"):
    if (meta.get("name") or "").lower() == "generator":
      content = (meta.get("content") or "").lower()
      if any(g in content for g in _DOCBOOK_GENERATORS):
        return True
  return False


def prepare_tree(tree) -> None:
  """The pre-processing that makes trafilatura keep what it would lose and drop what its fallback
  would keep (see INLINE_TAGS, DOCBOOK_ASIDE_CLASSES, DOCBOOK_NAV_CLASSES); measured by
  benchmarks/extraction_fidelity.py."""
  docbook = is_docbook(tree)
  for element in list(tree.iter()):
    if not isinstance(element.tag, str) or element.getparent() is None:
      continue
    classes = set((element.get("class") or "").split())
    if element.tag == "nav" or element.get("role") == "navigation" or docbook and (
        classes & DOCBOOK_NAV_CLASSES or element.get("id") in DOCBOOK_NAV_IDS):
      element.drop_tree()  # Keeps its tail text, which belongs to the parent.
    elif docbook and element.tag == "div" and classes & DOCBOOK_ASIDE_CLASSES:
      element.set("class", " ".join(sorted(classes - DOCBOOK_ASIDE_CLASSES)) or "para")
  lxml.etree.strip_tags(tree, *INLINE_TAGS)


def _stand_ins(html: str) -> dict[str, str]:
  """``{kept format char: printable stand-in}`` for the ones in ``html`` (see _KEPT_FORMAT_CHARS)."""
  present = [c for c in _KEPT_FORMAT_CHARS if c in html]
  free = [c for c in _STAND_IN_CANDIDATES if c not in html]
  return dict(zip(present, free))  # A page holding every candidate keeps trafilatura's behaviour.


def html_to_text(html: str, url: str, prepare: bool = True) -> str:
  """Main text of a page, one paragraph per line (trafilatura, tuned for recall).

  ``prepare=False`` skips :func:`prepare_tree` and the format-character stand-ins (trafilatura
  alone: for the fidelity benchmark).
  """
  stand_ins = _stand_ins(html) if prepare else {}
  for char, stand_in in stand_ins.items():
    html = html.replace(char, stand_in)
  parser = lxml.html.HTMLParser(encoding="utf-8")
  try:
    tree = lxml.html.fromstring(html.encode("utf-8"), parser=parser)
  except lxml.etree.ParserError:  # "Document is empty": no elements at all.
    return ""
  _collapse_whitespace(tree)
  if prepare:
    prepare_tree(tree)
  text = trafilatura.extract(
      tree,
      url=url or None,
      output_format="txt",
      favor_recall=True,
      include_tables=True,
      include_comments=False,  # Reader comments are mostly short, low-quality text.
      include_links=False,
      include_images=False,
      include_formatting=False,
      deduplicate=False,  # trafilatura's dedup cache is process state: not deterministic.
  )
  text = text or ""
  for char, stand_in in stand_ins.items():
    text = text.replace(stand_in, char)
  return text


def clean_text(text: str) -> str:
  """NFC, stripped lines, no empty lines, no trailing ``¶`` anchors (Sphinx headings)."""
  lines = (line.strip().rstrip("¶").rstrip() for line in unicodedata.normalize("NFC", text).split("\n"))
  return "\n".join(line for line in lines if line)


def call_with_timeout(fn, timeout_s: float, *args):
  """Runs ``fn(*args)`` in a daemon thread; raises ExtractTimeout after ``timeout_s``.

  Signal-free, so it works in any worker thread. A thread cannot be killed: a timed-out call keeps
  running in the background until it ends, but the pipeline moves on and does not hang on exit.
  """
  result: dict[str, Any] = {}

  def target():
    try:
      result["value"] = fn(*args)
    except Exception as e:  # Re-raised in the caller's thread.
      result["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise ExtractTimeout(f"took more than {timeout_s}s")
  if "error" in result:
    raise result["error"]
  return result["value"]


def warc_input_files(input_path: str) -> list[str]:
  """WARC/WET files of a directory, or the files matching a pattern, sorted.

  A crawl's output directory (it holds the crawl's fetch log) is read through
  ``crawl.warc_files``, which refuses an unfinished crawl or one with a promised file missing.
  """
  if FileSystems.match([crawl.fetch_log_pattern(input_path)])[0].metadata_list:
    return crawl.warc_files(input_path)
  patterns = [input_path]
  if FileSystems.match([input_path.rstrip("/") + "/*"])[0].metadata_list:
    patterns = [FileSystems.join(input_path, p) for p in ("*.warc", "*.warc.gz", "*.wet", "*.wet.gz")]
  files = sorted({m.path for r in FileSystems.match(patterns) for m in r.metadata_list})
  if not files:
    raise common.StageError(f"No WARC files match {input_path}.")
  return files


# ----------------------------------------------------------------------------- Beam steps


class ReadWarcRecords(beam.DoFn):
  """File path -> one raw record dict per WARC record; non-text records go to the rejects.

  A file that cannot be read to its end adds one ``warc_read_error`` record (naming the file, the
  byte offset and the error) after the records read before the failure. That covers a corrupt
  gzip member, a record cut short (fewer bytes than its Content-Length: a truncated download),
  bytes after the last complete record, a last gzip member without its trailer, and a file that
  is not WARC at all (warcio reads some text files as ARC records).
  """

  def __init__(self, source: str = ""):
    self._source = source

  def process(self, path: str):
    source = self._source or source_name(path)
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      archive = ArchiveIterator(f)  # warcio handles per-record gzip itself.
      records = iter(archive)
      start, pending = 0, None  # A record is emitted once the next one has been read cleanly.
      while True:
        try:
          start = archive.offset
          record = next(records)
          if record.format != "warc":
            raise WarcFormatError(f"not a WARC record (warcio reads it as {record.format})")
          length = (record.rec_headers.get_header("Content-Length") or "").strip()
          if not length.isascii() or not length.isdigit():  # Required by WARC/1.0.
            raise WarcFormatError(
                f"record without a valid Content-Length ({length!r}): cut inside its headers?")
          parsed = self._raw_record(record, path, source)
          if record.raw_stream.limit:  # The file ended inside this record.
            raise WarcFormatError(
                f"record cut short: {record.raw_stream.limit} of its {record.length} bytes missing")
        except StopIteration:
          break
        except Exception as e:  # warcio raises several types for a corrupt or truncated file.
          if pending is not None:
            yield self._emit(pending)
          yield self._read_error(path, start, e)
          return
        if pending is not None:
          yield self._emit(pending)
        pending = parsed
      try:
        _check_last_member(f, start, archive.offset)
      except WarcFormatError as e:  # The last record's gzip member is cut: not kept.
        yield self._read_error(path, start, e)
        return
      if pending is not None:
        yield self._emit(pending)
      if archive.offset != size:
        yield self._read_error(path, archive.offset, WarcFormatError(
            f"{size - archive.offset} bytes after the last complete record are not a record"))

  @staticmethod
  def _emit(parsed):
    raw, reason, details = parsed
    Metrics.counter(STAGE, "in").inc()
    return common.reject(STAGE, reason, raw, **details) if reason else raw

  @staticmethod
  def _read_error(path: str, offset: int, error: Exception):
    Metrics.counter(STAGE, "in").inc()
    return common.reject(STAGE, "warc_read_error", {"id": "", "file": path},
                         offset=offset, error=common.error_text(error))

  def _raw_record(self, record, path: str, source: str):
    """``(raw, reject reason or "", details)``; reads the record to its end."""
    headers = record.rec_headers
    uri = headers.get_header("WARC-Target-URI") or ""
    raw = {
        "id": doc_id(uri, headers.get_header("WARC-Record-ID") or ""),
        "url": normalize_url(uri),
        "source": source,
        "warc_date": headers.get_header("WARC-Date") or "",
        "warc_type": record.rec_type,
        "file": path,
    }
    if record.rec_type not in TEXT_RECORD_TYPES:
      _drain(record)
      return raw, "non_response_record", {}
    try:
      http = _http_headers(record)
      raw["status"] = int(http.get_statuscode() or 0) if http else None
      raw["content_type"] = (http.get_header("Content-Type") or "") if http else ""
      raw["body"] = record.content_stream().read()  # De-chunked and content-decoded.
    except Exception as e:  # Broken HTTP headers or a broken gzip/brotli/chunked body.
      _drain(record)
      return raw, "decode_error", {"error": common.error_text(e)}
    _drain(record)
    return raw, "", {}


class WarcFormatError(Exception):
  """A WARC file that is not WARC, or not complete."""


def _drain(record) -> None:
  """Reads what is left of a record, so that a cut-short record shows in its remaining limit."""
  while record.raw_stream.read(1 << 16):
    pass


def _check_last_member(f, last_start: int, end: int) -> None:
  """Raises WarcFormatError if the last record is a gzip member without its end (warcio does
  not check the trailer, so a download cut in the last few bytes would pass unseen)."""
  if end <= last_start:
    return
  f.seek(last_start)
  member = f.read(end - last_start)
  if member[:2] == b"\x1f\x8b":
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
      while member and not decompressor.eof:
        decompressor.decompress(member, 1 << 20)
        member = decompressor.unconsumed_tail
    except zlib.error as e:
      raise WarcFormatError(f"last gzip member: {e}") from None
    if not decompressor.eof:
      raise WarcFormatError("last gzip member is truncated (no end-of-stream marker)")


def _http_headers(record):
  """The HTTP headers of a response record (None for conversion records).

  warcio only parses them when the target URI starts with a lowercase ``http:``/``https:``;
  records with an upper-case scheme are parsed here so they are not silently treated as non-HTTP.
  """
  if record.rec_type != "response":
    return None
  if record.http_headers is None and (record.content_type or "").startswith("application/http"):
    record.http_headers = ArcWarcRecordLoader().http_parser.parse(record.raw_stream)
  return record.http_headers


class ExtractText(beam.DoFn):
  """Raw record -> document with ``text``, ``lang`` and ``lang_score``, or a counted reject."""

  def __init__(self, config: ExtractConfig, html_to_text_fn=html_to_text):
    self._config = config
    self._html_to_text = html_to_text_fn
    self._langid = None

  def setup(self):
    self._langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

  @common.per_element(STAGE, "extract_error")
  def process(self, raw: dict[str, Any]):
    yield self._extract(raw)

  def _extract(self, raw: dict[str, Any]):
    body = raw.pop("body")
    if len(body) > self._config.max_html_bytes:
      return common.reject(STAGE, "page_too_large", raw, bytes=len(body),
                           max_html_bytes=self._config.max_html_bytes)
    if raw["warc_type"] == "conversion":  # WET text: UTF-8 by the format's definition.
      try:
        text = body.decode("utf-8")
      except UnicodeDecodeError as e:
        return common.reject(STAGE, "decode_error", raw, error=str(e))
    else:
      if raw["status"] != 200:
        return common.reject(STAGE, "http_status", raw, status=raw["status"])
      if not is_html(raw["content_type"], body):
        return common.reject(STAGE, "not_html", raw, content_type=raw["content_type"])
      decoded = decode_html(body, raw["content_type"])
      if decoded is None:
        return common.reject(STAGE, "decode_error", raw, error="no charset decodes the page")
      try:
        text = call_with_timeout(
            self._html_to_text, self._config.extract_timeout_s, decoded[0], raw["url"])
      except ExtractTimeout as e:
        return common.reject(STAGE, "extract_timeout", raw, error=str(e))
      except Exception as e:  # lxml/trafilatura failures on malformed pages.
        return common.reject(STAGE, "extract_error", raw, error=f"{type(e).__name__}: {e}")
    text = clean_text(text)
    if not text:
      return common.reject(STAGE, "empty_text", raw)
    lang, score = self._langid.classify(text.replace("\n", " "))
    doc = {k: raw[k] for k in ("id", "url", "source", "warc_date")}
    return dict(doc, text=text, lang=lang, lang_score=round(float(score), 4))


class ApplyLanguageFilter(beam.DoFn):
  """Keeps documents in ``--languages`` with ``lang_score >= --min_lang_score``."""

  def __init__(self, config: ExtractConfig):
    self._languages = frozenset(l.strip() for l in config.languages.split(",") if l.strip())
    self._min_score = config.min_lang_score

  @common.per_element(STAGE, "extract_error")
  def process(self, doc: common.Doc):
    if (self._languages and doc["lang"] not in self._languages) or doc["lang_score"] < self._min_score:
      yield common.reject(STAGE, "language", doc, lang=doc["lang"], lang_score=doc["lang_score"])
    else:
      yield common.keep(STAGE, doc)


class ExtractDocs(beam.PTransform):
  """WARC file paths -> {"in", "kept", "rejects"}: the stage's records in, its kept documents and
  its rejects (unreadable records, failed extractions, other languages). Used by ``run`` and by the
  fused filter job."""

  def __init__(self, config: ExtractConfig, source: str = "", html_to_text_fn=html_to_text):
    super().__init__()
    self._config = config
    self._source = source
    self._html_to_text_fn = html_to_text_fn

  def expand(self, files):
    extract_text, language = steps(self._config, self._html_to_text_fn)
    records = files | "ReadWarc" >> beam.ParDo(ReadWarcRecords(self._source)).with_outputs(
        common.REJECTS_TAG, main="records")
    extracted = (
        records.records
        | "Spread" >> beam.Reshuffle()
        | "Progress" >> beam.ParDo(common.CountProgress(STAGE))
        | "Extract" >> beam.ParDo(extract_text).with_outputs(common.REJECTS_TAG, main="docs")
    )
    filtered = extracted.docs | "Language" >> beam.ParDo(language).with_outputs(
        common.REJECTS_TAG, main="kept")
    inputs = (records.records, records[common.REJECTS_TAG])  # Counted apart: common.CountAll.
    rejects = (
        records[common.REJECTS_TAG], extracted[common.REJECTS_TAG], filtered[common.REJECTS_TAG]
    ) | "AllRejects" >> beam.Flatten()
    return {"in": inputs, "kept": filtered.kept, "rejects": rejects}


def steps(config: ExtractConfig, html_to_text_fn=html_to_text) -> tuple[beam.DoFn, ...]:
  """The DoFns after the WARC reader, in order: for :class:`ExtractDocs` and for the per-input
  layout (pipelines/shardwise.py), whose source is :class:`ReadWarcRecords` itself."""
  return ExtractText(config, html_to_text_fn), ApplyLanguageFilter(config)


def run(input_path: str, output_dir: str, num_shards: int, config: ExtractConfig,
        source: str = "", options=None, html_to_text_fn=html_to_text,
        num_reject_shards: int = 0,
        target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES,
        shard_layout: str = common.BY_SIZE) -> dict[str, Any]:
  """Runs the job; ``html_to_text_fn(html, url) -> text`` replaces trafilatura if given.

  ``shard_layout=per_input``: one WARC file -> one docs shard and one rejects shard, read and
  extracted in one DoFn call (pipelines/shardwise.py; no ``Spread`` reshuffle of the records).
  """
  files = warc_input_files(input_path)
  logging.info("%s: %d WARC files -> %s (%s layout)", STAGE, len(files), output_dir, shard_layout)
  if shard_layout == common.PER_INPUT:
    shardwise.check_no_shard_count(num_shards, num_reject_shards)
    with common.atomic_output_dir(output_dir) as tmp_dir:
      shardwise.run_chain(files, ReadWarcRecords(source),
                          [shardwise.Stage(STAGE, steps(config, html_to_text_fn), tmp_dir)],
                          tmp_dir, options)
    return common.read_stats(output_dir)
  with common.atomic_output_dir(output_dir) as tmp_dir:
    with beam.Pipeline(options=options) as p:
      _ = (
          p
          | "Files" >> beam.Create(files)
          | "ExtractDocs" >> ExtractDocs(config, source, html_to_text_fn)
          | "Write" >> common.WriteStageOutput(
              tmp_dir, STAGE, num_shards, num_reject_shards=num_reject_shards,
              target_shard_bytes=target_shard_bytes)
      )
  return common.read_stats(output_dir)


def add_args(parser) -> None:
  add_config_flags(parser, ExtractConfig)
  parser.add_argument("--source", default="",
                      help="Source name of every document (default: WARC file name up to the first dot).")


def main(argv=None) -> dict[str, Any]:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  return run(args.input, args.output_dir, args.num_shards, config_from_args(ExtractConfig, args),
             args.source, options, num_reject_shards=args.num_reject_shards,
             target_shard_bytes=args.target_shard_bytes, shard_layout=args.shard_layout)


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  main()
