"""Tests for pipelines.extract on tiny WARC files written with warcio."""

import hashlib
import io
import json
import time
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines import common
from pipelines import extract

ENGLISH = (
    "<html><head><title>Tutorial</title></head><body><nav><a href='/'>Home</a></nav><main>"
    "<h1>An Informal Introduction</h1>"
    "<p>In the following examples, input and output are distinguished by the presence or\n"
    "absence of prompts. To repeat the example, you must type everything after the prompt,\n"
    "when the prompt appears; lines that do not begin with a prompt are output from the interpreter.</p>"
    "<p>Many of the examples in this manual, even those entered at the interactive prompt, include\n"
    "comments. Comments in Python start with the hash character and extend to the end of the line.</p>"
    "<table><tr><td>Operator</td><td>Meaning of the operator in the language</td></tr></table>"
    "</main></body></html>"
)
FRENCH = (
    "<html><body><article><p>Dans les exemples suivants, les entrées et les sorties se distinguent "
    "par la présence ou l'absence d'invites. Pour reproduire l'exemple, vous devez taper tout ce "
    "qui suit l'invite, quand celle-ci apparaît; les lignes qui ne commencent pas par une invite "
    "sont les sorties de l'interpréteur.</p></article></body></html>"
)
RUSSIAN = (
    "<html><body><article><p>В следующих примерах ввод и вывод различаются наличием или "
    "отсутствием приглашений. Чтобы повторить пример, нужно ввести всё, что следует за "
    "приглашением, когда оно появляется; строки, которые не начинаются с приглашения, являются "
    "выводом интерпретатора.</p></article></body></html>"
)


def write_warc(path: Path, records, gzip=True):
  """records: (uri, kind, status, content_type, body bytes); kind in response/request/conversion."""
  with open(path, "wb") as f:
    writer = WARCWriter(f, gzip=gzip)
    writer.write_record(writer.create_warcinfo_record(path.name, {"software": "test"}))
    for uri, kind, status, content_type, body in records:
      if kind == "response":
        http = StatusAndHeaders(f"{status} X", [("Content-Type", content_type)], protocol="HTTP/1.1")
        record = writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=http)
      elif kind == "request":
        http = StatusAndHeaders(f"GET {uri} HTTP/1.1", [("Host", "example.com")], is_http_request=True)
        record = writer.create_warc_record(uri, "request", payload=io.BytesIO(b""), http_headers=http)
      else:
        record = writer.create_warc_record(
            uri, kind, payload=io.BytesIO(body), warc_content_type=content_type)
      writer.write_record(record)
  return path


@pytest.fixture(scope="module")
def warc_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("warcs")
  write_warc(d / "web.warc.gz", [
      ("HTTP://Docs.Example.ORG:80/tutorial?b=2&a=1#intro", "request", 0, "", b""),
      ("HTTP://Docs.Example.ORG:80/tutorial?b=2&a=1#intro", "response", 200,
       "text/html; charset=utf-8", ENGLISH.encode("utf-8")),
      ("http://example.fr/intro", "response", 200, "text/html", FRENCH.encode("utf-8")),
      ("http://example.com/missing", "response", 404, "text/html", b"<html>Not found</html>"),
      ("http://example.com/logo.png", "response", 200, "image/png", b"\x89PNG\r\n\x1a\n"),
      ("http://example.com/empty", "response", 200, "text/html", b"<html><body></body></html>"),
      ("http://example.com/nothing", "response", 200, "text/html", b""),
  ])
  # Uncompressed WET-style file: a conversion record is already text.
  write_warc(d / "wet.warc", [
      ("http://example.com/plain", "conversion", 0, "text/plain",
       "Plain text from a WET file.\nIt has two paragraphs, the second one in English.".encode()),
  ], gzip=False)
  return d


def read_jsonl(path):
  return [json.loads(line) for line in Path(path).read_text().splitlines()]


def all_docs(out):
  return [d for p in sorted(Path(out).glob("docs-*.jsonl")) for d in read_jsonl(p)]


def rejects(out):
  return read_jsonl(Path(out) / "rejects" / "rejects-00000-of-00001.jsonl")


@pytest.fixture(scope="module")
def extracted(warc_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("out") / "extract"
  stats = extract.main([f"--input={warc_dir}", f"--output_dir={out}", "--num_shards=2"])
  return out, stats


def test_every_record_is_counted_by_reason(extracted):
  out, stats = extracted
  assert stats == json.loads((out / "stats.json").read_text())
  assert stats["in"] == 10  # 2 warcinfo + 1 request + 6 responses + 1 conversion
  assert stats["kept"] == 2
  assert stats["dropped"] == {
      "non_response_record": 3, "language": 1, "http_status": 1, "not_html": 1, "empty_text": 2}
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  assert (out / "_SUCCESS").exists()
  assert sorted(p.name for p in out.glob("docs-*")) == [
      "docs-00000-of-00002.jsonl", "docs-00001-of-00002.jsonl"]
  reasons = sorted(r["reason"] for r in rejects(out))
  assert reasons == sorted(sum(([k] * v for k, v in stats["dropped"].items()), []))


def test_documents_follow_the_contract(extracted):
  out, _ = extracted
  docs = {d["source"]: d for d in all_docs(out)}
  assert set(docs) == {"web", "wet"}
  web = docs["web"]
  assert web["url"] == "http://docs.example.org/tutorial?a=1&b=2"
  assert len(web["id"]) == 16 and int(web["id"], 16) >= 0
  assert web["lang"] == "en" and web["lang_score"] > 0.9
  assert web["warc_date"]
  # A paragraph wrapped over several source lines becomes one line; tables are kept.
  assert ("In the following examples, input and output are distinguished by the presence or "
          "absence of prompts.") in web["text"]
  assert "Meaning of the operator in the language" in web["text"]
  assert "Home" not in web["text"].split("\n")
  assert docs["wet"]["text"] == (
      "Plain text from a WET file.\nIt has two paragraphs, the second one in English.")
  details = {r["reason"]: r for r in rejects(out)}
  assert details["http_status"]["details"] == {"status": 404}
  assert details["language"]["details"]["lang"] == "fr"


def test_doc_id_is_sha1_of_uri_and_record_id():
  assert extract.doc_id("http://a/", "<urn:uuid:1>") == hashlib.sha1(
      b"http://a/\n<urn:uuid:1>").hexdigest()[:16]


def test_rerun_is_byte_identical(warc_dir, extracted, tmp_path):
  out, _ = extracted
  again = tmp_path / "again"
  extract.main([f"--input={warc_dir}", f"--output_dir={again}", "--num_shards=2"])
  files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
  for f in files:
    assert (out / f).read_bytes() == (again / f).read_bytes(), f


def test_all_languages_flag_and_source_override(warc_dir, tmp_path):
  stats = extract.main([f"--input={warc_dir}/web.warc.gz", f"--output_dir={tmp_path / 'o'}",
                        "--languages=", "--source=docs"])
  assert stats["kept"] == 2 and "language" not in stats["dropped"]
  assert {d["source"] for d in all_docs(tmp_path / "o")} == {"docs"}


def _slow_on_tutorial(html, url):
  if "tutorial" in url:
    time.sleep(2)
  return extract.html_to_text(html, url)


def test_slow_extraction_is_a_counted_timeout(warc_dir, tmp_path):
  start = time.time()
  stats = extract.run(f"{warc_dir}/web.warc.gz", str(tmp_path / "o"), 1,
                      extract.ExtractConfig(extract_timeout_s=0.2, languages=""),
                      html_to_text_fn=_slow_on_tutorial)
  assert stats["dropped"]["extract_timeout"] == 1
  assert stats["kept"] == 1  # The French page.
  (timeout,) = [r for r in rejects(tmp_path / "o") if r["reason"] == "extract_timeout"]
  assert "tutorial" in timeout["doc"]["url"]


def test_call_with_timeout():
  assert extract.call_with_timeout(lambda x: x + 1, 1.0, 1) == 2
  start = time.time()
  with pytest.raises(extract.ExtractTimeout):
    extract.call_with_timeout(time.sleep, 0.05, 2)
  assert time.time() - start < 1
  with pytest.raises(ZeroDivisionError):
    extract.call_with_timeout(lambda: 1 / 0, 1.0)


def test_wrong_declared_charset_is_repaired():
  # Declared latin-1, served UTF-8: must not become "cafÃ©".
  text, codec = extract.decode_html("<p>café naïve</p>".encode("utf-8"), "text/html; charset=iso-8859-1")
  assert text == "<p>café naïve</p>" and codec == "utf-8"
  # Declared UTF-8 (header and meta), served windows-1251: detection finds Cyrillic.
  body = ('<meta charset="utf-8">' + RUSSIAN).encode("cp1251")
  text, codec = extract.decode_html(body, "text/html; charset=utf-8")
  assert "следующих примерах" in text
  # Declared UTF-8, served Latin-1 (as in the bundled sample): no Baltic look-alike letters.
  body = "<p>Café, résumé, naïve, déjà vu in Zürich for £30 at 15°.</p>".encode("cp1252")
  text, codec = extract.decode_html(body, "text/html; charset=utf-8")
  assert text == "<p>Café, résumé, naïve, déjà vu in Zürich for £30 at 15°.</p>"
  # A correct legacy declaration is honoured (latin-1 is decoded as windows-1252, per WHATWG).
  text, codec = extract.decode_html("<p>Café “quoted”</p>".encode("cp1252"), "text/html; charset=ISO-8859-1")
  assert text == "<p>Café “quoted”</p>" and codec == "cp1252"
  # Meta charset is used when the header has none.
  text, _ = extract.decode_html('<meta charset="koi8-r"><p>привет мир</p>'.encode("koi8_r"), "text/html")
  assert "привет мир" in text


def test_url_normalisation():
  assert extract.normalize_url("HTTPS://Example.COM:443/a/b?z=1&y=2#top") == "https://example.com/a/b?y=2&z=1"
  assert extract.normalize_url("<http://example.com/x>") == "http://example.com/x"


def test_corrupt_warc_is_counted(tmp_path):
  good = write_warc(tmp_path / "bad.warc.gz", [
      ("http://example.com/", "response", 200, "text/html", ENGLISH.encode())])
  data = good.read_bytes()
  good.write_bytes(data + b"\x1f\x8b\x08\x00garbage that is not a gzip member")
  stats = extract.main([f"--input={good}", f"--output_dir={tmp_path / 'o'}"])
  assert stats["kept"] == 1
  assert stats["dropped"] == {"non_response_record": 1, "warc_read_error": 1}
  (error,) = [r for r in rejects(tmp_path / "o") if r["reason"] == "warc_read_error"]
  assert error["doc"]["file"].endswith("bad.warc.gz") and error["details"]["error"]


def test_missing_input_is_a_clear_error(tmp_path):
  with pytest.raises(common.StageError, match="No WARC files"):
    extract.main([f"--input={tmp_path}/nothing-*.warc.gz", f"--output_dir={tmp_path / 'o'}"])
  assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- malformed input
# Each case below once aborted the whole job or hid its real cause (issue 10).


def _outputs(fn, *args):
  """The outputs of a DoFn call, as ("raw" | reason, value)."""
  return [(o.value["reason"], o.value) if hasattr(o, "tag") else ("raw", o) for o in fn(*args)]


def test_non_text_charsets_and_malformed_urls_are_documents_not_crashes(tmp_path):
  page = ENGLISH.encode("utf-8")
  path = write_warc(tmp_path / "odd.warc.gz", [
      ("http://example.com/hex", "response", 200, "text/html; charset=hex", page),
      ("http://example.com/b64", "response", 200, "text/html; charset=base64", page),
      ("http://example.com/rot", "response", 200, "text/html; charset=rot13", page),
      ("http://[::1/broken-ipv6", "response", 200, "text/html", page),
      ("http://example.com/meta", "response", 200, "text/html",
       b'<meta charset="zlib">' + page),
  ])
  stats = extract.main([f"--input={path}", f"--output_dir={tmp_path / 'o'}"])
  assert stats["in"] == 6 and stats["kept"] == 5  # The 6th record is the warcinfo.
  urls = sorted(d["url"] for d in all_docs(tmp_path / "o"))
  assert "http://[::1/broken-ipv6" in urls
  assert extract.declared_charsets("text/html; charset=hex", b'<meta charset="base64">') == []


def test_truncated_warc_gz_reports_a_read_error_and_drops_the_cut_record(tmp_path):
  path = write_warc(tmp_path / "whole.warc.gz", [
      ("http://example.com/a", "response", 200, "text/html", ENGLISH.encode()),
      ("http://example.com/b", "response", 200, "text/html", FRENCH.encode())])
  data = path.read_bytes()
  whole = _outputs(extract.ReadWarcRecords().process, str(path))
  assert [kind for kind, _ in whole] == ["non_response_record", "raw", "raw"]
  for cut in (len(data) - 1, len(data) - 8, len(data) - 40, len(data) - 200):
    cut_path = tmp_path / f"cut{cut}.warc.gz"
    cut_path.write_bytes(data[:cut])
    outputs = _outputs(extract.ReadWarcRecords().process, str(cut_path))
    assert outputs[-1][0] == "warc_read_error", cut
    assert [v["url"] for kind, v in outputs if kind == "raw"] == ["http://example.com/a"], cut
    assert outputs[-1][1]["details"]["error"], cut


def test_uncompressed_warc_cut_inside_a_record_or_with_trailing_bytes(tmp_path):
  path = write_warc(tmp_path / "plain.warc", [
      ("http://example.com/a", "response", 200, "text/html", ENGLISH.encode())], gzip=False)
  data = path.read_bytes()
  for name, content in (("cut.warc", data[:-300]), ("tail.warc", data + b"stray bytes\r\n")):
    (tmp_path / name).write_bytes(content)
    outputs = _outputs(extract.ReadWarcRecords().process, str(tmp_path / name))
    assert outputs[-1][0] == "warc_read_error", name


@pytest.mark.parametrize("content", [
    b"hello, this is not a WARC file at all\n",
    b"<html><body><p>An HTML page saved under the wrong name.</p></body></html>",
    # mtime=0: the same bytes (and test id) in every process that collects the tests.
    __import__("gzip").compress(b"a gzipped text file, not a WARC\n" * 50, mtime=0),
    b"",
], ids=["text", "html", "gzipped_text", "empty"])
def test_a_file_that_is_not_warc_is_a_read_error(tmp_path, content):
  path = tmp_path / "notwarc.warc.gz"
  path.write_bytes(content)
  outputs = _outputs(extract.ReadWarcRecords().process, str(path))
  if content:
    assert [kind for kind, _ in outputs] == ["warc_read_error"]
    assert outputs[0][1]["doc"]["file"] == str(path)
  else:
    assert outputs == []  # An empty file holds no records: nothing to count.


def test_a_huge_page_is_dropped_for_its_size_not_as_empty_text():
  body = b"<html><body>" + b"<p>" + b"word " * (20_000_000 // 5) + b"</p></body></html>"
  raw = {"id": "a" * 16, "url": "http://example.com/", "source": "web", "warc_date": "",
         "warc_type": "response", "file": "f", "status": 200, "content_type": "text/html",
         "body": body}
  (kind, value), = _outputs(extract.ExtractText(extract.ExtractConfig()).process, raw)
  assert kind == "page_too_large"
  assert value["details"] == {"bytes": len(body), "max_html_bytes": 5_000_000}


def test_an_unexpected_failure_on_one_page_is_a_counted_extract_error(warc_dir, tmp_path):
  def explode_on_french(html, url):
    if "example.fr" in url:
      raise KeyError("a bug no check foresaw")
    return extract.html_to_text(html, url)
  stats = extract.run(str(warc_dir), str(tmp_path / "o"), 1, extract.ExtractConfig(languages=""),
                      html_to_text_fn=explode_on_french)
  assert stats["dropped"]["extract_error"] == 1 and stats["kept"] == 2
  (error,) = [r for r in rejects(tmp_path / "o") if r["reason"] == "extract_error"]
  assert error["details"]["error"].startswith("KeyError")


# ----------------------------------------------------------------------------- fidelity


def test_docbook_admonitions_and_nested_inline_markup_keep_their_text():
  body = "".join(
      f"<div class='para'>Paragraph {i} explains how the package manager resolves the "
      f"dependencies of a package before it installs anything on the system.</div>"
      for i in range(6))
  html = (
      "<html><head><meta name='generator' content='publican v4.3.2'></head><body>"
      "<ul class='docnav'><li><a href='/prev'>Prev</a></li><li><a href='/next'>Next</a></li></ul>"
      f"<div class='section'>{body}"
      "<div class='sidebar'><p class='title'><strong><em>TIP</em> Incremental updates</strong></p>"
      "<div class='para'>The update command downloads only the differences between two "
      "versions of the package index, which saves a lot of bandwidth.</div></div>"
      "<div class='para'>Run <code><em>apt</em> update</code> and then management of "
      "<code>crontab</code> files is the same as before on every machine you run.</div>"
      "</div></body></html>")
  text = extract.html_to_text(html, "https://example.org/")
  assert "downloads only the differences between two versions" in text
  assert "Run apt update and then management of crontab files" in text
  raw = extract.html_to_text(html, "https://example.org/", prepare=False)
  assert "downloads only the differences" not in raw  # What trafilatura alone loses.
  # The same classes on a page that is not DocBook stay trafilatura's to judge.
  tree = extract.lxml.html.fromstring(html.replace("publican", "wordpress"))
  extract.prepare_tree(tree)
  assert tree.xpath("//div[@class='sidebar']")


HANDBOOK_PAGES = Path(__file__).parent / "data" / "debian_handbook"  # See its README.md.


@pytest.mark.parametrize("language", ["zh-CN", "fa-IR"])
def test_translated_handbook_pages_keep_all_text_and_no_navigation(language):
  from benchmarks import extraction_fidelity

  html = (HANDBOOK_PAGES / f"{language}.sect.selected-approach.html").read_bytes()
  labels = extraction_fidelity.label_page(html)  # Labelled from the page structure.
  assert len(labels.paragraphs) == 2 and len(labels.boilerplate) == 8
  scores = {}
  for prepare in (True, False):
    text = extract.clean_text(extract.html_to_text(html.decode("utf-8"), "https://debian-handbook.info/",
                                                   prepare=prepare))
    scores[prepare] = extraction_fidelity.score(labels, text)
  assert scores[True] == {"body": (2, 2), "boilerplate": (8, 8)}
  # What trafilatura alone does: the Chinese page comes with its navigation lists and banner,
  # the Persian paragraphs lose their ZERO WIDTH NON-JOINERs (so they are not found).
  assert scores[False] == {"zh-CN": {"body": (2, 2), "boilerplate": (2, 8)},
                           "fa-IR": {"body": (0, 2), "boilerplate": (8, 8)}}[language]


def test_format_characters_survive_and_navigation_is_dropped_on_any_page():
  words = "می\u200cخواهیم کتاب را ترجمه کنیم و 👩\u200d💻 برنامه\u200cنویس است. " * 3
  html = (f"<html><body><nav><ul><li><a href='/'>Home</a></li><li><a href='/a'>About us</a></li>"
          f"</ul></nav><div role='navigation'><a href='/b'>Blog archive</a></div>"
          f"<article><p>{words}</p></article></body></html>")
  text = extract.clean_text(extract.html_to_text(html, "https://example.org/"))
  assert text == words.strip()
  # A page that already holds every stand-in character: trafilatura's own behaviour, no mix-up.
  crowded = html.replace("<article>", "<article><p>" + extract._STAND_IN_CANDIDATES + "</p>")
  assert "\u200c" not in extract.html_to_text(crowded, "https://example.org/")
