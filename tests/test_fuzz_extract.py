"""The extract job under arbitrary input: WARC files cut at every byte, mutated WARC bytes, and
arbitrary HTML, charsets and URLs inside records (property-based and exhaustive).

Each WARC file read gives a prefix of its complete records followed, if anything was lost, by
one ``warc_read_error``; each record gives exactly one document or one counted reject, and what
is kept can be written as UTF-8 JSON.

Fuzz budget: the hypothesis profile (tests/conftest.py: 200 examples, `--hypothesis-profile=long` 10,000).
"""

import io

import apache_beam as beam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines import common, extract

FUZZ = settings(  # The loaded profile (tests/conftest.py), and fixtures shared across examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])

hostile_text = st.text(st.characters(exclude_categories=()), max_size=60)
PAGE = (b"<html><head><meta charset=utf-8><title>T</title></head><body><p>Short page with a "
        b"paragraph of text for the reader.</p></body></html>")


def _warc_bytes(records, gzip: bool) -> bytes:
  """A small WARC file: warcinfo + (uri, content_type, body) responses and one request."""
  out = io.BytesIO()
  writer = WARCWriter(out, gzip=gzip)
  writer.write_record(writer.create_warcinfo_record("f.warc", {"software": "fuzz"}))
  for uri, content_type, body in records:
    http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(body),
                                                  http_headers=http))
  request = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
  writer.write_record(writer.create_warc_record("http://example.com/", "request",
                                                payload=io.BytesIO(b""), http_headers=request))
  return out.getvalue()


SMALL = [("http://example.com/a", "text/html", PAGE),
         ("http://example.com/b", "text/html; charset=hex", PAGE.replace(b"Short", b"Other"))]


def _read(path):
  """ReadWarcRecords' outputs as (kind, value): kind is "raw" or the reject reason."""
  outputs = []
  for out in extract.ReadWarcRecords().process(str(path)):
    if isinstance(out, beam.pvalue.TaggedOutput):
      common.dumps(out.value).encode("utf-8")  # Writable.
      outputs.append((out.value["reason"], out.value))
    else:
      outputs.append(("raw", out))
  return outputs


def _record_starts(data: bytes) -> list[int]:
  it = ArchiveIterator(io.BytesIO(data))
  starts = []
  for record in it:
    starts.append(it.offset)
    record.content_stream().read()
  return starts + [it.offset]


@pytest.mark.parametrize("gzip", [True, False], ids=["warc.gz", "warc"])
def test_a_warc_cut_at_every_byte_keeps_only_complete_records(tmp_path, gzip):
  data = _warc_bytes(SMALL, gzip)
  starts = _record_starts(data)
  path = tmp_path / ("f.warc.gz" if gzip else "f.warc")
  path.write_bytes(data)
  full = _read(path)
  assert [kind for kind, _ in full] == ["non_response_record", "raw", "raw", "non_response_record"]
  slack = 0 if gzip else 4  # Uncompressed records end with CRLF CRLF, outside the record.
  for cut in range(len(data)):
    path.write_bytes(data[:cut])
    outputs = _read(path)
    errors = [kind for kind, _ in outputs if kind == "warc_read_error"]
    records = [o for o in outputs if o[0] != "warc_read_error"]
    assert len(errors) <= 1 and (not errors or outputs[-1][0] == "warc_read_error"), cut
    assert records == full[:len(records)], cut  # Never a cut record passed off as complete.
    if not errors:  # Then nothing was lost: the cut fell between two records.
      assert starts[len(records)] - slack <= cut <= starts[len(records)], (cut, outputs)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "insert", "delete"]),
                          st.binary(min_size=1, max_size=8)), min_size=1, max_size=4),
       st.booleans())
def test_mutated_warc_bytes_never_escape_as_exceptions(tmp_path, mutations, gzip):
  data = bytearray(_warc_bytes(SMALL, gzip))
  for position, kind, junk in mutations:
    i = position % (len(data) + 1)
    if kind == "flip" and i < len(data):
      data[i] ^= junk[0]
    elif kind == "insert":
      data[i:i] = junk
    else:
      del data[i:i + len(junk)]
  path = tmp_path / "m.warc.gz"
  path.write_bytes(bytes(data))
  outputs = _read(path)
  assert sum(kind == "warc_read_error" for kind, _ in outputs) <= 1


_EXTRACT = extract.ExtractText(extract.ExtractConfig())
_EXTRACT.setup()
_LANGUAGE = extract.ApplyLanguageFilter(extract.ExtractConfig())

html_pieces = st.one_of(
    st.sampled_from(["<p>", "</p>", "<div>", "<nav>", "<code><em>x</em></code>", "<table><tr><td>",
                     "<pre>", "<!--", "-->", "<script>", "<meta charset=hex>", "<base href='http://[::1'>",
                     "<a href='http://[bad/'>", "&#xD800;", "&#0;", "<![CDATA[", "<?xml?>", "\x00"]),
    hostile_text,
)
html_bodies = st.one_of(
    st.binary(max_size=400),
    st.lists(html_pieces, max_size=30).map(
        lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
)
content_types = st.one_of(
    st.builds(lambda t, c: f"{t}; charset={c}", st.sampled_from(["text/html", "", "text/plain"]),
              st.sampled_from(["utf-8", "hex", "base64", "rot13", "utf-16", "utf-7", "bogus",
                               "unicode_escape", "idna", ""])),
    hostile_text,
)


@FUZZ
@given(html_bodies, content_types, st.one_of(st.just("http://example.com/"), hostile_text),
       st.sampled_from(["response", "conversion"]), st.sampled_from([200, 404, None]))
def test_any_record_content_is_one_document_or_one_reject(body, content_type, url, warc_type, status):
  raw = {"id": "a" * 16, "url": extract.normalize_url(url), "source": "web", "warc_date": "",
         "warc_type": warc_type, "file": "f", "status": status, "content_type": content_type,
         "body": body}
  out = _EXTRACT._extract(raw)  # Not the per-element safety net: nothing may need it here.
  if isinstance(out, beam.pvalue.TaggedOutput):
    common.dumps(out.value).encode("utf-8")
    return
  (decided,) = list(_LANGUAGE.process(out))
  common.dumps(getattr(decided, "value", decided)).encode("utf-8")
  assert isinstance(out["text"], str) and out["text"]


@FUZZ
@given(st.binary(max_size=300), content_types)
def test_any_bytes_decode_to_writable_text_or_none(body, content_type):
  decoded = extract.decode_html(body, content_type)
  if decoded is not None:
    decoded[0].encode("utf-8")
