"""The bundled sample (data/sample/) is well-formed WARC, matches its manifest, and is reproducible."""

from __future__ import annotations

import collections
import gzip
import hashlib
import importlib.util
import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import lxml.html
import pytest
from warcio.archiveiterator import ArchiveIterator

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SCRIPT = ROOT / "tools" / "make_sample.py"
WARCS = ("docs.warc.gz", "web.warc.gz")
MAX_TOTAL_BYTES = 4_000_000


def _load_script():
  spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up here.
  spec.loader.exec_module(module)
  return module


make_sample = _load_script()


@pytest.fixture(scope="module")
def manifest() -> dict:
  return json.loads((SAMPLE / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
  """Every record of each WARC file: type, WARC headers, HTTP headers and body."""
  out = {}
  for name in WARCS:
    out[name] = []
    with open(SAMPLE / name, "rb") as f:
      for record in ArchiveIterator(f):
        out[name].append({
            "type": record.rec_type,
            "version": record.rec_headers.protocol,
            "warc": dict(record.rec_headers.headers),
            "http": record.http_headers,
            "body": record.content_stream().read(),
        })
  return out


@pytest.fixture(scope="module")
def bodies(records) -> dict[str, bytes]:
  return {r["warc"]["WARC-Target-URI"]: r["body"]
          for rs in records.values() for r in rs if r["type"] == "response"}


def test_warc_files_have_warcinfo_then_request_response_pairs(records):
  for name, rs in records.items():
    assert rs[0]["type"] == "warcinfo", name
    assert rs[0]["warc"]["WARC-Filename"] == name
    assert {r["version"] for r in rs} == {"WARC/1.0"}
    pairs = rs[1:]
    assert len(pairs) % 2 == 0
    for request, response in zip(pairs[::2], pairs[1::2]):
      assert (request["type"], response["type"]) == ("request", "response")
      assert request["warc"]["WARC-Target-URI"] == response["warc"]["WARC-Target-URI"]
      assert request["warc"]["WARC-Concurrent-To"] == response["warc"]["WARC-Record-ID"]
      assert request["http"].protocol == "GET"
      assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", response["warc"]["WARC-Date"])
    ids = [r["warc"]["WARC-Record-ID"] for r in rs]
    assert len(ids) == len(set(ids))


def test_every_manifest_url_is_one_response_in_its_warc(records, manifest):
  for name, rs in records.items():
    source = name.split(".")[0]
    urls = [r["warc"]["WARC-Target-URI"] for r in rs if r["type"] == "response"]
    assert len(urls) == len(set(urls))
    expected = {u for u, p in manifest["pages"].items() if p["warc"] == name}
    assert set(urls) == expected
    assert {manifest["pages"][u]["source"] for u in urls} == {source}


def test_responses_have_realistic_http_headers_matching_the_manifest(records, manifest):
  for rs in records.values():
    for r in rs:
      if r["type"] != "response":
        continue
      page = manifest["pages"][r["warc"]["WARC-Target-URI"]]
      http = r["http"]
      assert http.protocol == "HTTP/1.1"
      assert int(http.get_statuscode()) == page["status"]
      assert http.get_header("Content-Type") == page["content_type"]
      assert int(http.get_header("Content-Length")) == len(r["body"])
      assert http.get_header("Date").endswith(" GMT")
      assert hashlib.sha256(r["body"]).hexdigest() == page["body_sha256"]
      if page["content_type"].startswith("text/"):
        assert "charset=" in page["content_type"]


def test_kind_counts(manifest):
  kinds = collections.Counter(p["kind"] for p in manifest["pages"].values())
  assert dict(kinds) == manifest["counts"]
  assert set(kinds) == set(make_sample.KINDS)
  assert kinds["forum"] == 30 and kinds["toxic"] == 8
  assert kinds["exact_dup"] == 15 and kinds["near_dup"] == 10 and kinds["boilerplate"] == 10
  assert 200 <= sum(kinds.values()) <= 400
  docs = [p for p in manifest["pages"].values() if p["source"] == "docs"]
  assert len(docs) == 120 and {(p["kind"], p["lang"]) for p in docs} == {("real", "en")}
  web_langs = collections.Counter(
      p["lang"] for p in manifest["pages"].values() if p["source"] == "web" and p["kind"] == "real")
  assert web_langs == {"en": 15, "de": 15, "fr": 15, "es": 15, "it": 15}


def _luhn_ok(number: str) -> bool:
  digits = [int(d) for d in number if d.isdigit()][::-1]
  total = sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits))
  return total % 10 == 0


def _iban_ok(iban: str) -> bool:
  moved = iban[4:] + iban[:4]
  return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


PII_CHECKS = {
    "email": lambda v: re.fullmatch(r"[\w.+-]+@[\w-]+(\.[\w-]+)+", v),
    "phone": lambda v: sum(c.isdigit() for c in v) >= 7,
    "ipv4": lambda v: ipaddress.IPv4Address(v).is_global,
    "credit_card": lambda v: re.fullmatch(r"[\d ]{15,19}", v) and _luhn_ok(v),
    "ssn": lambda v: re.fullmatch(r"\d{3}-\d{2}-\d{4}", v),
    "iban": lambda v: re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", v) and _iban_ok(v),
    "aws_access_key": lambda v: re.fullmatch(r"AKIA[A-Z2-7]{16}", v),
    "github_token": lambda v: re.fullmatch(r"ghp_[A-Za-z0-9]{36}", v),
}


def test_planted_pii_is_well_formed_and_in_the_page(manifest, bodies):
  found = collections.Counter()
  for url, page in manifest["pages"].items():
    for item in page.get("pii", []):
      assert PII_CHECKS[item["type"]](item["value"]), item
      assert item["value"].encode("utf-8") in bodies[url], (url, item)
      found[item["type"]] += 1
  assert set(found) == set(manifest["pii_types"]) == set(PII_CHECKS)
  assert min(found.values()) >= 5
  forum = [p for p in manifest["pages"].values() if p["kind"] == "forum"]
  assert all(len(p["pii"]) >= 3 for p in forum)


def _shingles(body: bytes, k: int = 5) -> set[tuple[str, ...]]:
  words = lxml.html.fromstring(body).text_content().split()
  return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def test_duplicates_are_copies_of_real_or_forum_pages(manifest, bodies):
  pages = manifest["pages"]
  assert len(manifest["duplicates"]) == 25
  for dup in manifest["duplicates"]:
    original, copy = pages[dup["original"]], pages[dup["copy"]]
    assert original["kind"] in ("real", "forum")
    assert copy["kind"] == f"{dup['kind']}_dup" and copy["source"] == "web"
    assert copy["pii"] == original.get("pii", [])
    if dup["kind"] == "exact":
      assert bodies[dup["copy"]] == bodies[dup["original"]]
    else:
      assert bodies[dup["copy"]] != bodies[dup["original"]]
      a, b = _shingles(bodies[dup["original"]]), _shingles(bodies[dup["copy"]])
      assert len(a & b) / len(a | b) > 0.75, dup
  variants = collections.Counter(d.get("variant") for d in manifest["duplicates"])
  assert variants[None] == 15 and len(variants) == 4


def test_records_without_usable_text(manifest, bodies):
  by_kind = collections.defaultdict(list)
  for url, page in manifest["pages"].items():
    by_kind[page["kind"]].append((url, page))
  (png_url, png), = by_kind["binary"]
  assert png["content_type"] == "image/png" and bodies[png_url].startswith(b"\x89PNG\r\n\x1a\n")
  (_, error), = by_kind["http_error"]
  assert error["status"] == 404
  (_, redirect), = by_kind["redirect"]
  assert redirect["status"] == 301
  (empty_url, _), = by_kind["empty"]
  assert bodies[empty_url] == b""
  assert len(by_kind["bad_charset"]) == 2
  for url, page in by_kind["bad_charset"]:
    assert page["content_type"].endswith("charset=utf-8")
    with pytest.raises(UnicodeDecodeError):
      bodies[url].decode("utf-8")


def test_redirect_has_location_header(records, manifest):
  redirects = [r for r in records["web.warc.gz"] if r["type"] == "response"
               and manifest["pages"][r["warc"]["WARC-Target-URI"]]["kind"] == "redirect"]
  assert redirects and all(r["http"].get_header("Location") in manifest["pages"]
                           for r in redirects)


def test_toxic_and_boilerplate_pages(manifest, bodies):
  toxic = {u: p for u, p in manifest["pages"].items() if p["kind"] == "toxic"}
  assert collections.Counter(p["subkind"] for p in toxic.values()) == {"mixed": 6, "abusive": 2}
  for url, page in toxic.items():
    planted = page["toxic_sentences"]
    assert len(planted) == (10 if page["subkind"] == "abusive" else 3)
    assert set(planted) <= set(make_sample.TOXIC_SENTENCES)
    assert all(s.encode("utf-8") in bodies[url] for s in planted), url
  assert any(b"fuck" in bodies[url] for url in toxic)
  boilerplate = [p for p in manifest["pages"].values() if p["kind"] == "boilerplate"]
  assert len({p["subkind"] for p in boilerplate}) == 10


def test_size_cap():
  assert sum((SAMPLE / name).stat().st_size for name in WARCS) <= MAX_TOTAL_BYTES


def test_license_notices_are_bundled():
  readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
  assert ".venv/bin/python tools/make_sample.py --out data/sample" in readme
  assert "python3.11-doc" in readme and "debian-reference-fr" in readme
  licenses = SAMPLE / "licenses"
  assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in (licenses / "PSF-LICENSE.txt").read_text()
  assert "GNU General Public License" in (licenses / "debian-reference-copyright.txt").read_text()
  assert "GNU GENERAL PUBLIC LICENSE" in (licenses / "GPL-2.txt").read_text()
  assert "Apache License" in (licenses / "Apache-2.0.txt").read_text()


def test_check_planted_rejects_a_missing_pii_value():
  page = make_sample.Page(url="https://x.example/", kind="forum", lang="en", body=b"<p>hi</p>",
                          pii=[{"type": "email", "value": "a@b.example"}])
  with pytest.raises(AssertionError, match="planted email"):
    make_sample.check_planted([page])


def test_near_duplicate_rejects_an_unknown_variant():
  with pytest.raises(ValueError, match="unknown near-duplicate variant"):
    make_sample.near_duplicate(b"<body><p>one two three</p></body>", "shuffled", "A sentence.")


def test_python_doc_pages_names_the_missing_package(tmp_path):
  with pytest.raises(SystemExit, match="python3.11-doc"):
    make_sample.python_doc_pages(tmp_path)


@pytest.mark.skipif(not (make_sample.PYTHON_DOCS_DIR.exists()
                         and make_sample.DEBIAN_REFERENCE_DIR.exists()),
                    reason="the Debian packages python3.11-doc and debian-reference-* (make test installs them) "
                           "are not installed")
def test_rebuild_is_byte_identical(tmp_path):
  subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True,
                 capture_output=True, timeout=120)
  built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
  bundled = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file())
  assert built == bundled
  for path in built:
    new, old = (tmp_path / path).read_bytes(), (SAMPLE / path).read_bytes()
    if path.suffix == ".gz":
      assert gzip.decompress(new) == gzip.decompress(old), f"{path}: records differ"
      assert new == old, f"{path}: same records, other gzip bytes (another zlib version?)"
    assert new == old, path
