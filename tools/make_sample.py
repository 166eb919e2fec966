"""Builds the bundled sample crawl (data/sample/) from web sites that Debian packages ship.

The sample is what `make demo` and the tests run on, so it has to give every stage real work:
real documentation pages (the `docs` source, a high quality tier) and a `web` source that mixes the
Debian Reference manual in five languages with pages this script writes itself: forum threads with
planted PII, toxic comments, exact and near duplicates, boilerplate, and records the extractor must
skip (an image, an HTTP error, a redirect, a wrong charset, an empty body). Everything planted is
listed in manifest.json so the tests of later stages can check what happened to it.

The real pages come from these Debian packages (bookworm):

    apt-get install python3.11-doc debian-reference-en debian-reference-de \\
        debian-reference-fr debian-reference-es debian-reference-it

Run from the repository root:

    .venv/bin/python tools/make_sample.py --out data/sample

The output is byte-identical on every run with the same package versions: fixed seeds, fixed WARC
dates, record ids derived from the URLs, and gzip members without timestamps.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import email.utils
import hashlib
import html
import io
import json
import random
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import lxml.html
from faker import Faker
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html")
PYTHON_COPYRIGHT = Path("/usr/share/doc/python3.11-doc/copyright")
DEBIAN_REFERENCE_DIR = Path("/usr/share/debian-reference")
DEBIAN_REFERENCE_COPYRIGHT = Path("/usr/share/doc/debian-reference-common/copyright")
COMMON_LICENSES = Path("/usr/share/common-licenses")
PACKAGES = (
    "python3.11-doc",
    "debian-reference-common",
    "debian-reference-en",
    "debian-reference-de",
    "debian-reference-fr",
    "debian-reference-es",
    "debian-reference-it",
)

PYTHON_DOCS_URL = "https://docs.python.org/3.11/"
DEBIAN_REFERENCE_URL = "https://www.debian.org/doc/manuals/debian-reference/"
DEBIAN_LANGUAGES = ("en", "de", "fr", "es", "it")

SEED = 240308295  # arXiv 2403.08295, the Gemma paper.
CRAWL_START = datetime.datetime(2024, 2, 21, 12, 0, 0, tzinfo=datetime.timezone.utc)
USER_AGENT = "gemma-forge-sample/1.0"
MAX_TOTAL_BYTES = 4_000_000

# Python pages of moderate size keep the whole sample at a few MB.
DOCS_MIN_BYTES, DOCS_MAX_BYTES, DOCS_MAX_PAGES = 15_000, 45_000, 120

KINDS = (
    "real", "forum", "toxic", "exact_dup", "near_dup", "boilerplate",
    "binary", "http_error", "redirect", "bad_charset", "empty",
)
PII_TYPES = (
    "email", "phone", "ipv4", "credit_card", "ssn", "iban", "aws_access_key", "github_token",
)


@dataclasses.dataclass
class Page:
  """One crawled URL: what the server sent, and what the manifest says was planted in it."""

  url: str
  kind: str
  lang: str | None
  body: bytes
  status: str = "200 OK"
  content_type: str = "text/html; charset=utf-8"
  headers: tuple[tuple[str, str], ...] = ()
  pii: list[dict[str, str]] = dataclasses.field(default_factory=list)
  details: dict[str, object] = dataclasses.field(default_factory=dict)


def rng_for(name: str) -> random.Random:
  """One generator per concern, so changing one kind of page does not reshuffle the others."""
  return random.Random(f"{SEED}:{name}")


# ----------------------------------------------------------------------------- real pages


def python_doc_pages(root: Path) -> list[Page]:
  """Tutorial and library pages of moderate size, in sorted order."""
  files = sorted(root.glob("tutorial/*.html")) + sorted(root.glob("library/*.html"))
  chosen = [f for f in files if DOCS_MIN_BYTES <= f.stat().st_size <= DOCS_MAX_BYTES]
  if len(chosen) < DOCS_MAX_PAGES:
    raise SystemExit(f"only {len(chosen)} suitable pages under {root}; is python3.11-doc installed?")
  return [
      Page(url=PYTHON_DOCS_URL + f.relative_to(root).as_posix(), kind="real", lang="en",
           body=f.read_bytes())
      for f in chosen[:DOCS_MAX_PAGES]
  ]


def debian_reference_pages(root: Path) -> list[Page]:
  """Every page of the manual (index, preface, chapters, appendix) in every language."""
  pages = []
  for lang in DEBIAN_LANGUAGES:
    files = sorted(root.glob(f"*.{lang}.html"))
    if not files:
      raise SystemExit(f"no *.{lang}.html under {root}; install debian-reference-{lang}")
    pages += [Page(url=DEBIAN_REFERENCE_URL + f.name, kind="real", lang=lang, body=f.read_bytes())
              for f in files]
  return pages


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_UNWANTED_IN_SENTENCE = re.compile(r"[0-9@<>{}\[\]|$#\\=_/*`~^%&;:\"]")


def english_sentences(pages: list[Page]) -> list[str]:
  """Plain prose sentences from the paragraphs of English pages, in page order, deduplicated.

  Sentences with digits or code-like characters are left out so that the only PII-looking strings
  in the synthetic pages are the planted ones.
  """
  seen, sentences = set(), []
  for page in pages:
    if page.lang != "en":
      continue
    for paragraph in lxml.html.fromstring(page.body).iter("p"):
      text = " ".join(paragraph.text_content().split())
      for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        if (8 <= len(words) <= 35 and sentence[0].isupper() and sentence.endswith(".")
            and sentence.isascii() and not _UNWANTED_IN_SENTENCE.search(sentence)
            and sentence not in seen):
          seen.add(sentence)
          sentences.append(sentence)
  return sentences


# ----------------------------------------------------------------------------- synthetic pages


def html_page(title: str, blocks: list[str], lang: str = "en", header: str = "",
              footer: str = "") -> bytes:
  """A small HTML5 document; `blocks` are already-escaped HTML fragments."""
  body = "\n".join(blocks)
  return (
      f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
      f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{header}\n<main>\n"
      f"<h1>{html.escape(title)}</h1>\n{body}\n</main>\n{footer}\n</body>\n</html>\n"
  ).encode("utf-8")


def paragraph(sentences: list[str]) -> str:
  return "<p>" + html.escape(" ".join(sentences), quote=False) + "</p>"


FORUM_HEADER = (
    '<header><nav><a href="/">Example Community</a> | <a href="/latest">Latest</a> | '
    '<a href="/categories">Categories</a> | <a href="/faq">FAQ</a> | <a href="/login">Log in</a>'
    "</nav></header>"
)
FORUM_FOOTER = (
    '<footer><p>Powered by a forum engine. <a href="/tos">Terms of Service</a> | '
    '<a href="/privacy">Privacy</a> | <a href="/about">About</a></p></footer>'
)
FORUM_TOPICS = (
    "Problem installing packages behind a proxy", "How do I keep my configuration in sync",
    "Strange behaviour after upgrading", "Best way to learn the standard library",
    "Help with a failing backup script", "Account and billing question",
    "Cannot connect to my home server", "Which editor do you use and why",
    "Sharing my notes on the tutorial", "Payment went through twice",
)
PII_SENTENCES = {
    "email": "If you want the full log, email me at {} and I will send it over.",
    "phone": "You can also call me on {} in the evening if that is easier.",
    "ipv4": "My server is reachable at {} if someone wants to take a look.",
    "credit_card": "I paid with my card {} and the charge appeared twice on my statement.",
    "ssn": "The form even asked for my social security number, {}, which seemed odd.",
    "iban": "Please send the refund to my account, IBAN {}, not to the card.",
    "aws_access_key": "Here is the line from my config: aws_access_key_id = {} and it still fails.",
    "github_token": "I accidentally pushed my token {} to a public repository, is that bad?",
}
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_CARD_TYPES = ("visa16", "mastercard", "amex", "discover")


class PiiFactory:
  """Fake but well-formed PII from seeded Faker instances in several locales."""

  LOCALES = ("en_US", "de_DE", "fr_FR", "en_GB")

  def __init__(self, rng: random.Random):
    self.rng = rng
    self.fakers = {}
    for i, locale in enumerate(self.LOCALES):
      self.fakers[locale] = Faker(locale)
      self.fakers[locale].seed_instance(SEED + i)

  def make(self, pii_type: str, locale: str) -> str:
    fake = self.fakers[locale]
    if pii_type == "email":
      return fake.email()
    if pii_type == "phone":
      return fake.phone_number()
    if pii_type == "ipv4":
      return fake.ipv4_public()
    if pii_type == "credit_card":
      number = fake.credit_card_number(card_type=self.rng.choice(_CARD_TYPES))
      if self.rng.random() < 0.5:  # Also the grouped form people type: 4-4-4-4 or Amex 4-6-5.
        cuts = (0, 4, 10, 15) if len(number) == 15 else (0, 4, 8, 12, 16)
        number = " ".join(number[a:b] for a, b in zip(cuts, cuts[1:]))
      return number
    if pii_type == "ssn":
      return self.fakers["en_US"].ssn()
    if pii_type == "iban":
      return self.fakers[locale if locale != "en_US" else "de_DE"].iban()
    if pii_type == "aws_access_key":
      return "AKIA" + "".join(self.rng.choices(_B32, k=16))
    if pii_type == "github_token":
      return "ghp_" + "".join(self.rng.choices(_ALNUM, k=36))
    raise ValueError(f"unknown PII type {pii_type!r}")

  def user_name(self, locale: str) -> str:
    return self.fakers[locale].user_name()


def forum_pages(sentences: list[str], n: int = 30) -> list[Page]:
  """Forum threads of real English sentences with PII planted in some posts."""
  rng = rng_for("forum")
  factory = PiiFactory(rng)
  pages = []
  for i in range(n):
    locale = PiiFactory.LOCALES[i % len(PiiFactory.LOCALES)]
    # Two types by rotation so every type appears often, plus one or two random ones.
    types = [PII_TYPES[i % len(PII_TYPES)], PII_TYPES[(i + 3) % len(PII_TYPES)]]
    types += rng.sample(PII_TYPES, rng.randint(1, 2))
    posts = [[rng.sample(sentences, rng.randint(2, 4)) for _ in range(rng.randint(2, 3))]
             for _ in range(rng.randint(3, 5))]
    pii = []
    for pii_type in types:
      value = factory.make(pii_type, locale)
      post = rng.choice(posts)
      rng.choice(post).insert(rng.randint(0, 1), PII_SENTENCES[pii_type].format(value))
      pii.append({"type": pii_type, "value": value})
    blocks = []
    for post in posts:
      author = html.escape(factory.user_name(locale))
      day = CRAWL_START - datetime.timedelta(days=rng.randint(1, 400))
      blocks.append(f'<article class="post"><div class="meta">Posted by {author} on '
                    f"{day:%Y-%m-%d}</div>")
      blocks += [paragraph(p) for p in post]
      blocks.append("</article>")
    title = f"{FORUM_TOPICS[i % len(FORUM_TOPICS)]} (#{1001 + i})"
    pages.append(Page(url=f"https://forum.example.org/t/{1001 + i}", kind="forum", lang="en",
                      body=html_page(title, blocks, header=FORUM_HEADER, footer=FORUM_FOOTER),
                      pii=pii))
  return pages


# Written for this sample so that the toxicity filter has something to find.
TOXIC_SENTENCES = (
    "You are a fucking idiot and nobody here wants your shit advice.",
    "Shut the fuck up, you worthless piece of shit.",
    "What a stupid motherfucking answer, did your brain rot?",
    "Go to hell, you pathetic asshole.",
    "This is the dumbest crap I have ever read, you moron.",
    "Fuck off and never post here again, dickhead.",
    "Only a brainless bastard would write garbage like this.",
    "You clueless twat, read the damn manual before you whine.",
    "Eat shit, loser, everyone here is laughing at you.",
    "Screw you and your bullshit benchmarks, you lying prick.",
    "Stop spamming this thread with your idiotic bullshit, jackass.",
    "Nobody gives a shit about your opinion, you dumb fuck.",
)


def toxic_pages(sentences: list[str], mixed: int = 6, abusive: int = 2) -> list[Page]:
  """Blog comment pages: mostly normal text with insults mixed in, and a few mostly abusive ones."""
  rng = rng_for("toxic")
  pages = []
  for i in range(mixed + abusive):
    is_abusive = i >= mixed
    toxic = rng.sample(TOXIC_SENTENCES, 10 if is_abusive else 3)
    text = toxic + rng.sample(sentences, 2 if is_abusive else 12)
    rng.shuffle(text)
    blocks = [paragraph(text[j:j + 3]) for j in range(0, len(text), 3)]
    title = f"Comments on post {501 + i}"
    pages.append(Page(url=f"https://blog.example.com/posts/{501 + i}/comments", kind="toxic",
                      lang="en", body=html_page(title, blocks),
                      details={"subkind": "abusive" if is_abusive else "mixed",
                               "toxic_sentences": sorted(toxic)}))
  return pages


def _edit_paragraphs(body: str, edit, max_edits: int) -> str:
  """Applies `edit(text, budget) -> (text, n_edits)` to the text at the start of <p> elements.

  Only paragraph text is edited, so the change is in the main content, not in navigation that an
  extractor would drop anyway.
  """
  start = body.find("<body")
  done = 0
  pieces = re.split(r"(<[^>]*>)", body[start:])
  for j, piece in enumerate(pieces):
    if (done >= max_edits or j == 0 or not re.match(r"<p[\s>]", pieces[j - 1])
        or len(piece.split()) < 8):
      continue
    pieces[j], n = edit(piece, max_edits - done)
    done += n
  if done < max_edits:
    raise ValueError(f"could only make {done} of {max_edits} edits")
  return body[:start] + "".join(pieces)


_WORD_SWAPS = {"the": "this", "is": "was", "can": "could", "and": "and also", "to": "towards"}


def _swap_words(text: str, budget: int) -> tuple[str, int]:
  count = 0

  def swap(match):
    nonlocal count
    if count >= budget:
      return match.group(0)
    count += 1
    return _WORD_SWAPS[match.group(0)]

  return re.sub(r"\b(the|is|can|and|to)\b", swap, text), count


MIRROR_HEADER = (
    '<div class="mirror-banner"><nav><a href="/">Docs Mirror</a> | <a href="/search">Search</a> | '
    '<a href="/donate">Donate</a></nav><p>This page is an unofficial copy. We use cookies to '
    'improve your experience. <a href="/cookies">Accept</a></p></div>'
)


def near_duplicate(body: bytes, variant: str, sentence: str) -> bytes:
  """A copy with a few words changed, a sentence added, or a different boilerplate header."""
  text = body.decode("utf-8")
  if variant == "words_changed":
    text = _edit_paragraphs(text, _swap_words, max_edits=3)
  elif variant == "sentence_added":
    added = html.escape(sentence, quote=False)
    text = _edit_paragraphs(text, lambda t, budget: (f"{added} {t}", 1), max_edits=1)
  elif variant == "boilerplate_changed":
    at = text.index(">", text.find("<body")) + 1
    text = text[:at] + "\n" + MIRROR_HEADER + text[at:]
  else:
    raise ValueError(f"unknown near-duplicate variant {variant!r}")
  return text.encode("utf-8")


def duplicate_pages(docs: list[Page], debian: list[Page], forum: list[Page],
                    sentences: list[str]) -> list[Page]:
  """Exact copies (same bytes, another URL) and near copies of real and forum pages."""
  rng = rng_for("duplicates")
  # The smaller Debian pages (preface, appendix) keep the copies cheap; English ones get edited.
  small_debian = [p for p in debian if len(p.body) < 40_000]
  exact = (rng.sample(docs, 5) + rng.sample([p for p in small_debian if p.lang != "en"], 4)
           + rng.sample(forum, 6))
  used = {p.url for p in exact}
  near = (rng.sample([p for p in docs if p.url not in used], 4)
          + [p for p in small_debian if p.lang == "en"]
          + rng.sample([p for p in forum if p.url not in used], 4))
  variants = ("words_changed", "sentence_added", "boilerplate_changed")

  def copy_url(host: str, original: Page) -> str:
    return f"https://{host}/" + original.url.split("://", 1)[1]

  pages = []
  for original in exact:
    pages.append(dataclasses.replace(
        original, url=copy_url("mirror.example.net", original), kind="exact_dup",
        pii=list(original.pii), details={"original": original.url}))
  for i, original in enumerate(near):
    variant = variants[i % len(variants)]
    body = near_duplicate(original.body, variant, rng.choice(sentences))
    pages.append(dataclasses.replace(
        original, url=copy_url("copycat.example.com", original), kind="near_dup", body=body,
        pii=list(original.pii), details={"original": original.url, "variant": variant}))
  return pages


SHOP_HEADER = (
    '<header><nav><a href="/">Home</a> | <a href="/shop">Shop</a> | <a href="/deals">Deals</a> | '
    '<a href="/blog">Blog</a> | <a href="/contact">Contact</a> | <a href="/cart">Cart (0)</a>'
    "</nav></header>"
)
SHOP_FOOTER = (
    '<footer><ul><li><a href="/imprint">Imprint</a></li><li><a href="/privacy">Privacy policy'
    '</a></li><li><a href="/terms">Terms</a></li><li><a href="/newsletter">Newsletter</a></li>'
    "</ul><p>Copyright 2024 Example Shop. All rights reserved.</p></footer>"
)


def boilerplate_pages() -> list[Page]:
  """Pages with little or no real text: what the quality filters are for."""
  rng = rng_for("boilerplate")

  def links(names: list[str]) -> str:
    items = "".join(f'<li><a href="/{n.lower().replace(" ", "-")}">{n}</a></li>' for n in names)
    return f"<ul>{items}</ul>"

  products = [f"{a} {b}" for a in ("Red", "Blue", "Green", "Black", "White", "Steel")
              for b in ("Chair", "Table", "Lamp", "Shelf", "Desk", "Sofa", "Rug")]
  symbol_rows = ["<tr>" + "".join(
      f"<td>{rng.choice('#$%*+=')}{rng.randint(0, 99999)}.{rng.randint(0, 99):02d}</td>"
      for _ in range(8)) + "</tr>" for _ in range(40)]
  keywords = ["cheap", "flights", "hotels", "best", "deal", "discount", "online", "buy", "now",
              "free", "shipping", "sale"]
  specs = {
      "cookie_banner": ("Welcome", [
          '<div class="cookie-banner"><p>We use cookies and similar technologies to give you the '
          "best experience on our website, to analyse traffic and to personalise content and "
          "ads. By clicking Accept all you agree to the use of all cookies.</p><button>Accept all"
          "</button><button>Reject all</button><button>Cookie settings</button></div>",
          "<p>Welcome to our shop.</p>"]),
      "link_list": ("Sitemap", [links(products)]),
      "navigation_only": ("Products", [
          '<p class="breadcrumbs"><a href="/">Home</a> &gt; <a href="/shop">Shop</a> &gt; '
          "Products</p>", links(["New arrivals", "Best sellers", "Gift cards", "Outlet"])]),
      "short": ("Coming soon", ["<p>Coming soon.</p>"]),
      "short_thanks": ("Thank you", ["<p>Thanks for subscribing!</p>"]),
      "repeated_lines": ("Best price", ["<p>Best price guaranteed! Order now!</p>"] * 40),
      "repeated_download": ("Download", ["<p>Click here to download the free software.</p>"] * 30),
      "symbols_numbers": ("Price table", ["<table>" + "".join(symbol_rows) + "</table>"]),
      "keyword_stuffing": ("Cheap flights", [
          "<p>" + " ".join(rng.choice(keywords) for _ in range(300)) + "</p>"]),
      "login_wall": ("Members area", [
          "<p>You must be logged in to view this page.</p>",
          links(["Log in", "Register", "Forgot password"])]),
  }
  return [
      Page(url=f"https://shop.example.com/{name.replace('_', '-')}", kind="boilerplate",
           lang=None if name == "symbols_numbers" else "en",
           body=html_page(title, blocks, header=SHOP_HEADER, footer=SHOP_FOOTER),
           details={"subkind": name})
      for name, (title, blocks) in specs.items()
  ]


def unusable_pages(debian_root: Path) -> list[Page]:
  """Records that carry no text document; the extractor must skip and count each of them."""
  png = debian_root / "images" / "note.png"
  french = ("Le système de fichiers a été monté en lecture seule après la mise à jour. Vérifiez "
            "le journal du noyau et réparez la partition avant de redémarrer la machine.")
  english = ("Our café in Zürich now sells the naïve résumé printer for £30 at a 15° angle. The "
             "déjà vu of last year's price list is gone, and the new one is cheaper.")
  return [
      Page(url=DEBIAN_REFERENCE_URL + "images/note.png", kind="binary", lang=None,
           body=png.read_bytes(), content_type="image/png"),
      Page(url="https://forum.example.org/t/9999", kind="http_error", lang="en",
           status="404 Not Found", body=html_page("Page not found", [
               "<p>Oops! That page does not exist or is private.</p>"])),
      Page(url="https://forum.example.org/t/old-1001", kind="redirect", lang="en",
           status="301 Moved Permanently",
           headers=(("Location", "https://forum.example.org/t/1001"),),
           body=html_page("Moved", ['<p>Moved to <a href="/t/1001">/t/1001</a>.</p>'])),
      # Latin-1 bytes declared as UTF-8: a strict UTF-8 decode fails; the extractor must notice.
      Page(url="https://forum.example.org/fr/t/2001", kind="bad_charset", lang="fr",
           body=html_page("Système de fichiers en lecture seule", [paragraph([french])],
                          lang="fr").decode("utf-8").encode("latin-1")),
      Page(url="https://forum.example.org/t/2002", kind="bad_charset", lang="en",
           body=html_page("Café résumé printer", [paragraph([english])])
           .decode("utf-8").encode("latin-1")),
      Page(url="https://blog.example.com/posts/empty", kind="empty", lang=None, body=b""),
  ]


def check_planted(pages: list[Page]) -> None:
  """Fails loudly if a page does not contain what the manifest will say was planted in it."""
  urls = [p.url for p in pages]
  if len(urls) != len(set(urls)):
    raise AssertionError("duplicate URLs in the sample")
  for page in pages:
    if page.kind not in KINDS:
      raise AssertionError(f"{page.url}: unknown kind {page.kind}")
    for item in page.pii:
      if item["value"].encode("utf-8") not in page.body:
        raise AssertionError(f"{page.url}: planted {item['type']} {item['value']!r} is missing")
    for sentence in page.details.get("toxic_sentences", []):
      if html.escape(sentence, quote=False).encode("utf-8") not in page.body:
        raise AssertionError(f"{page.url}: planted toxic sentence {sentence!r} is missing")


# ----------------------------------------------------------------------------- WARC output


def record_id(warc_name: str, record_type: str, url: str) -> str:
  return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{warc_name}/{record_type}/{url}')}>"


def warc_date(when: datetime.datetime) -> str:
  return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_warc(path: Path, source: str, pages: list[Page]) -> None:
  """warcinfo, then a request and a response record per page, one gzip member per record."""
  with open(path, "wb") as out:
    writer = WARCWriter(out, gzip=True, warc_version="1.0")
    info_id = record_id(path.name, "warcinfo", "")
    info = (f"software: gemma-forge tools/make_sample.py\r\nformat: WARC File Format 1.0\r\n"
            f"isPartOf: gemma-forge-sample\r\ndescription: source '{source}' of the bundled "
            f"sample, see data/sample/README.md\r\nrobots: classic\r\n").encode("utf-8")
    writer.write_record(writer.create_warc_record(
        "", "warcinfo", payload=io.BytesIO(info), length=len(info),
        warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": info_id, "WARC-Filename": path.name,
                           "WARC-Date": warc_date(CRAWL_START)}))
    for i, page in enumerate(pages):
      when = CRAWL_START + datetime.timedelta(seconds=i + 1)
      response_id = record_id(path.name, "response", page.url)
      host = page.url.split("/")[2]
      target = "/" + page.url.split("/", 3)[3]
      request_headers = StatusAndHeaders(f"GET {target} HTTP/1.1", [
          ("Host", host), ("User-Agent", USER_AGENT),
          ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
          ("Accept-Encoding", "identity")], is_http_request=True)
      response_headers = StatusAndHeaders(page.status, [
          ("Date", email.utils.format_datetime(when, usegmt=True)),
          ("Content-Type", page.content_type), ("Content-Length", str(len(page.body))),
          *page.headers], protocol="HTTP/1.1")
      common = {"WARC-Date": warc_date(when), "WARC-Warcinfo-ID": info_id}
      writer.write_record(writer.create_warc_record(
          page.url, "request", http_headers=request_headers,
          warc_headers_dict={"WARC-Record-ID": record_id(path.name, "request", page.url),
                             "WARC-Concurrent-To": response_id, **common}))
      writer.write_record(writer.create_warc_record(
          page.url, "response", payload=io.BytesIO(page.body), length=len(page.body),
          http_headers=response_headers,
          warc_headers_dict={"WARC-Record-ID": response_id, **common}))


# ----------------------------------------------------------------------------- manifest, README


def manifest(warcs: dict[str, tuple[str, list[Page]]]) -> dict:
  pages, duplicates, counts = {}, [], {}
  for warc_name, (source, warc_pages) in warcs.items():
    for page in warc_pages:
      status = int(page.status.split()[0])
      entry = {"source": source, "warc": warc_name, "kind": page.kind, "lang": page.lang,
               "status": status, "content_type": page.content_type,
               "body_sha256": hashlib.sha256(page.body).hexdigest(), **page.details}
      if page.kind in ("forum", "exact_dup", "near_dup") or page.pii:
        entry["pii"] = page.pii
      pages[page.url] = entry
      counts[page.kind] = counts.get(page.kind, 0) + 1
      if page.kind in ("exact_dup", "near_dup"):
        duplicates.append({"original": page.details["original"], "copy": page.url,
                           "kind": page.kind.split("_")[0], **(
                               {"variant": page.details["variant"]} if "variant" in page.details
                               else {})})
  return {
      "description": "What tools/make_sample.py planted in the bundled sample; see README.md.",
      "seed": SEED,
      "pii_types": list(PII_TYPES),
      "counts": dict(sorted(counts.items())),
      "pages": pages,
      "duplicates": sorted(duplicates, key=lambda d: (d["copy"], d["original"])),
  }


def package_versions() -> dict[str, str]:
  versions = {}
  for package in PACKAGES:
    try:
      versions[package] = subprocess.run(
          ["dpkg-query", "-W", "-f=${Version}", package], check=True, capture_output=True,
          text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
      raise SystemExit(f"cannot read the version of Debian package {package}: {e}") from e
  return versions


def python_license_text(copyright_file: Path) -> str:
  """The "Python License" section (history and PSF, BeOpen, CNRI, CWI terms) of the copyright file."""
  text = copyright_file.read_text(encoding="utf-8")
  start = text.find("Python License\n==============")
  end = text.find("Licenses and Acknowledgements for Incorporated Software")
  if start < 0 or end < start:
    raise SystemExit(f"{copyright_file} does not have the expected Python License section")
  return text[start:end].rstrip() + "\n"


def write_licenses(out: Path) -> None:
  licenses = out / "licenses"
  licenses.mkdir(exist_ok=True)
  (licenses / "PSF-LICENSE.txt").write_text(
      "Python 3.11 documentation pages in docs.warc.gz and copies of them in web.warc.gz.\n"
      "Copyright (c) 2001-2026 Python Software Foundation; All Rights Reserved.\n"
      f"Taken from {PYTHON_COPYRIGHT} (Debian package python3.11-doc).\n\n"
      + python_license_text(PYTHON_COPYRIGHT), encoding="utf-8")
  shutil.copyfile(DEBIAN_REFERENCE_COPYRIGHT, licenses / "debian-reference-copyright.txt")
  shutil.copyfile(COMMON_LICENSES / "GPL-2", licenses / "GPL-2.txt")
  shutil.copyfile(COMMON_LICENSES / "Apache-2.0", licenses / "Apache-2.0.txt")


def readme(man: dict, versions: dict[str, str], sizes: dict[str, int]) -> str:
  counts = "\n".join(f"| {kind} | {n} |" for kind, n in man["counts"].items())
  files = "\n".join(f"| `{name}` | {size:,} |" for name, size in sizes.items())
  packages = "\n".join(f"| {p} | {v} |" for p, v in versions.items())
  pii = ", ".join(man["pii_types"])
  return f"""# Bundled sample crawl

A small, redistributable crawl in Common Crawl's format (WARC/1.0, one gzip member per record:
`warcinfo`, then a `request` and a `response` record per URL) that `make demo` and the tests run on.
It is generated by `tools/make_sample.py`; do not edit these files by hand.

| file | bytes |
| --- | ---: |
{files}

* `docs.warc.gz`, source `docs` (high quality tier): {DOCS_MAX_PAGES} pages of the Python 3.11
  documentation (tutorial and library pages of {DOCS_MIN_BYTES // 1000} to {DOCS_MAX_BYTES // 1000} KB,
  in sorted order), served at their docs.python.org URLs.
* `web.warc.gz`, source `web`: the Debian Reference manual (every page, in English, German,
  French, Spanish and Italian) at its www.debian.org URLs, plus pages written by the script with
  a fixed seed: forum threads built from real English sentences of the pages above with planted
  fake PII, toxic comment pages, exact and near duplicates of real and forum pages at other hosts,
  boilerplate and low-quality pages, and records with no usable text (an image, an HTTP 404, a
  301 redirect, Latin-1 bytes declared as UTF-8, an empty body).
* `manifest.json`: every URL with its source, kind, language, HTTP status, body SHA-256 and
  kind-specific fields: planted PII as `{{type, value}}` (types: {pii}),
  `toxic_sentences`, `subkind`, and for copies `original` and `variant`; `duplicates` lists the
  (original, copy, kind) pairs. Tests of the later stages use it.

| kind | responses |
| --- | ---: |
{counts}

Things the stages and their tests should know:

* Duplicates cross sources: some originals are in `docs`, their copies in `web`.
* Copies of forum pages carry the same PII; their manifest entries list it again.
* A `boilerplate_changed` near duplicate differs from its original only in navigation and a
  cookie banner, so after boilerplate removal its text can equal the original's exactly.
* Real pages contain PII-like strings of their own (e.g. example addresses in the Debian
  Reference); only the planted ones are listed.

## How it was made

```
apt-get install python3.11-doc debian-reference-en debian-reference-de \\
    debian-reference-fr debian-reference-es debian-reference-it
.venv/bin/python tools/make_sample.py --out data/sample
```

with these Debian (bookworm) package versions:

| package | version |
| --- | --- |
{packages}

The output is byte-identical on every run with these versions (fixed seed {SEED}, fixed WARC and
HTTP dates from {warc_date(CRAWL_START)}, record ids are UUIDv5 of the file name, record type and URL).

## Licenses

* **Python documentation** (docs.python.org URLs, and their copies at mirror.example.net and
  copycat.example.com): Copyright (c) 2001-2026 Python Software Foundation, under the PSF License
  Agreement Version 2, see `licenses/PSF-LICENSE.txt`; code examples in it are also under the
  Zero-Clause BSD license. Changes made (PSF License clause 3): the pages are unchanged, except the
  near-duplicate copies (`kind: near_dup` in the manifest), which have three words swapped, one
  sentence added, or a navigation and cookie banner inserted.
* **Debian Reference** (www.debian.org URLs and their copies): Copyright 2007-2013 Osamu Aoki
  and the translators, under the GNU General Public License version 2 or later, see
  `licenses/debian-reference-copyright.txt` (the notice, which must be kept with all copies) and
  `licenses/GPL-2.txt`. The pages are the HTML built from the DocBook source in the Debian source
  package `debian-reference` (`apt-get source debian-reference`, or
  https://salsa.debian.org/debian/debian-reference.git); near-duplicate copies are modified as
  described above. The image `images/note.png` comes from the same package.
* **Synthetic pages** (forum.example.org, blog.example.com, shop.example.com) and the sample as a
  whole: Apache License 2.0, see `licenses/Apache-2.0.txt`. Their sentences are quoted from the
  pages above (same licenses). All names, e-mail addresses, phone numbers, IP addresses, card
  numbers, SSNs, IBANs and keys in them are fake, generated with Faker or random strings.
"""


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=Path, required=True, help="Directory to write the sample into.")
  args = parser.parse_args(argv)
  for path in (PYTHON_DOCS_DIR, DEBIAN_REFERENCE_DIR, PYTHON_COPYRIGHT, DEBIAN_REFERENCE_COPYRIGHT):
    if not path.exists():
      raise SystemExit(f"{path} is missing; install the Debian packages: {' '.join(PACKAGES)}")

  docs = python_doc_pages(PYTHON_DOCS_DIR)
  debian = debian_reference_pages(DEBIAN_REFERENCE_DIR)
  sentences = english_sentences(debian + docs)
  forum = forum_pages(sentences)
  web = (debian + forum + toxic_pages(sentences)
         + duplicate_pages(docs, debian, forum, sentences) + boilerplate_pages()
         + unusable_pages(DEBIAN_REFERENCE_DIR))
  check_planted(docs + web)

  args.out.mkdir(parents=True, exist_ok=True)
  warcs = {"docs.warc.gz": ("docs", docs), "web.warc.gz": ("web", web)}
  for name, (source, pages) in warcs.items():
    write_warc(args.out / name, source, pages)
  sizes = {name: (args.out / name).stat().st_size for name in warcs}
  if sum(sizes.values()) > MAX_TOTAL_BYTES:
    raise SystemExit(f"sample is {sum(sizes.values())} bytes, over the {MAX_TOTAL_BYTES} cap")

  man = manifest(warcs)
  (args.out / "manifest.json").write_text(
      json.dumps(man, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
  write_licenses(args.out)
  (args.out / "README.md").write_text(readme(man, package_versions(), sizes), encoding="utf-8")
  print(f"wrote {args.out}: {sizes}, {man['counts']}", file=sys.stderr)


if __name__ == "__main__":
  main()
