"""The crawler under arbitrary input: HTTP responses, URLs and robots.txt (property-based).

A raw TCP server on 127.0.0.1 answers every request with the bytes hypothesis generated (status
line, headers, body), and the crawl's per-URL step must end each URL with exactly one outcome: a
kept page (which must then be writable to WARC and yield links) or a ``Refused`` reason. No other
exception may escape, so ``fetch_error`` (the per-element safety net) must never be needed here.

Name resolution is replaced by one that knows only the test server, so redirects that hypothesis
points anywhere never reach DNS or another port of this machine.

Fuzz budget: the hypothesis profile (tests/conftest.py: 200 examples, `--hypothesis-profile=long` 10,000).
"""

import contextlib
import socket
import socketserver
import threading
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import crawl, crawl_safety, extract
from pipelines.crawl_fetch import FetchConfig, Fetcher, HostState, RobotsRules
from pipelines.crawl_safety import Refused

FUZZ = settings()  # The loaded profile (tests/conftest.py): 200 examples, or 10,000 with --hypothesis-profile=long.

hostile_text = st.text(st.characters(exclude_categories=()), max_size=40)
odd_numbers = st.one_of(
    st.integers(-10, 10**12).map(str),
    st.text("0123456789\u00b2\u00b3\u0661\u0662\uff11\u2155 .-eE+", max_size=8),
)
charsets = st.sampled_from([
    "utf-8", "latin-1", "hex", "base64", "rot13", "zlib", "bz2", "uu", "quopri", "utf-16",
    "utf-32", "utf-7", "idna", "punycode", "unicode_escape", "bogus", "", '"utf-8"', "cp1252",
    "undefined", "mbcs",
])
# Redirect targets: relative paths, malformed IPv6 hosts, refused schemes and private addresses.
locations = st.one_of(
    st.sampled_from(["/", "/a", "page?x=1", "../up", "http://[::1", "http://[::1/x", "http://[bad/",
                     "//[::1", "file:///etc/passwd", "http://10.0.0.1/", "//10.0.0.2/x",
                     "http://user:pw@127.0.0.1/", "http://127.0.0.1:99999/", "javascript:x"]),
    hostile_text,
)
header_values = {
    "Content-Length": odd_numbers,
    "Retry-After": st.one_of(odd_numbers, st.sampled_from(
        ["Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 99 Foo 0 GMT"])),
    "Content-Type": st.one_of(
        st.builds(lambda t, c: f"{t}; charset={c}", st.sampled_from(
            ["text/html", "text/plain", "application/xhtml+xml", "image/png", ""]), charsets),
        hostile_text),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x-gzip", "", "zz"]),
    "Transfer-Encoding": st.sampled_from(["chunked", "gzip", "identity", "chunked, chunked"]),
    "Location": locations,
    "Set-Cookie": hostile_text,
}
headers = st.lists(
    st.one_of(*[st.tuples(st.just(name), values) for name, values in header_values.items()],
              st.tuples(hostile_text, hostile_text)),
    max_size=6,
)
html_bodies = st.builds(
    lambda links, base: (f'<base href="{base}">' if base else "") + "".join(
        f'<a href="{link}">x</a>' for link in links),
    st.lists(locations, max_size=4), st.one_of(st.none(), locations),
)
bodies = st.one_of(st.binary(max_size=300), html_bodies.map(lambda s: s.encode("utf-8", "surrogatepass")))
status_lines = st.one_of(
    st.builds(lambda v, code, reason: f"{v} {code} {reason}",
              st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/0.9", "ICY", ""]),
              st.one_of(st.sampled_from([200, 301, 302, 303, 307, 308, 404, 429, 500, 503]),
                        st.integers(-5, 1200)), hostile_text),
    hostile_text,
)


def _response(status: str, header_list, body: bytes, raw_tail: bytes) -> bytes:
  head = status.encode("utf-8", "surrogatepass") + b"\r\n" + b"".join(
      f"{k}: {v}".encode("utf-8", "surrogatepass") + b"\r\n" for k, v in header_list)
  return head + b"\r\n" + body + raw_tail


responses = st.builds(_response, status_lines, headers, bodies, st.binary(max_size=20))


class RawServer(socketserver.ThreadingTCPServer):
  """Answers every connection with ``payload`` (after reading the request head), then closes."""

  daemon_threads = True
  allow_reuse_address = True

  def __init__(self):
    self.payload = b""

    class Handler(socketserver.BaseRequestHandler):
      def handle(inner):
        inner.request.settimeout(1)
        with contextlib.suppress(OSError):
          data = b""
          while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = inner.request.recv(4096)
            if not chunk:
              break
            data += chunk
          inner.request.sendall(self.payload)

    super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def server():
  srv = RawServer()
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()


def _only_the_test_server(port):
  real = socket.getaddrinfo

  def getaddrinfo(host, p, *args, **kwargs):
    if host == "127.0.0.1" and p == port:
      return real(host, p, *args, **kwargs)
    raise socket.gaierror(f"fuzz test: {host}:{p} is not the test server")
  return mock.patch.object(socket, "getaddrinfo", getaddrinfo)


def test_any_http_response_ends_in_one_outcome(server):
  origin = f"http://127.0.0.1:{server.server_address[1]}"
  config = FetchConfig(allow_loopback=True, min_delay=0, connect_timeout=1, read_timeout=0.5,
                       total_timeout=2, max_retries=1, backoff=0, max_retry_after=0.01,
                       max_redirects=2, max_body_bytes=4096)
  step = crawl.FetchHost(crawl.CrawlConfig(fetch=config, allowed_hosts=frozenset(["127.0.0.1"])),
                         depth=0)

  @FUZZ
  @given(responses)
  def check(payload):
    server.payload = payload
    fetcher = Fetcher(config, {origin: HostState(RobotsRules("allow_all"), 0.0)},
                      sleep=lambda s: None)
    outputs = step._fetch_one(fetcher, origin + "/page", origin)
    outcomes = [o for o in outputs if isinstance(o, dict)]
    assert len(outcomes) == 1, outputs
    assert outcomes[0]["reason"] != "fetch_error", outcomes[0]  # Only Refused reasons.
    if outcomes[0]["reason"] == "kept":
      assert sum(getattr(o, "tag", None) == crawl.CAPTURES for o in outputs) == 1

  with _only_the_test_server(server.server_address[1]):
    check()


@FUZZ
@given(st.one_of(hostile_text, locations,
                 st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(["http", "HTTPS", "ftp", ""]),
                           hostile_text, hostile_text)))
def test_any_url_normalises_or_is_refused(url):
  try:
    normal = crawl_safety.normalize_url(url)
  except Refused as e:
    assert e.reason in ("bad_url", "scheme_not_allowed")
  else:
    assert crawl_safety.normalize_url(normal) == normal  # One spelling per URL.
    assert normal.isascii()
  assert isinstance(extract.normalize_url(url), str)  # extract keeps any URI as an identifier.


@FUZZ
@given(locations, locations)
def test_any_link_resolves_or_is_refused(base, href):
  for page in ("http://example.com/dir/page", base):
    try:
      link = crawl_safety.join_url(page, href)
    except Refused as e:
      assert e.reason in ("bad_url", "scheme_not_allowed")
    else:
      assert link.startswith(("http://", "https://"))


robots_lines = st.one_of(
    st.builds(lambda k, v: f"{k}:{v}", st.sampled_from(
        ["User-agent", "Disallow", "Allow", "Crawl-delay", "Request-rate", "Sitemap", "Host"]),
        st.one_of(odd_numbers, locations, hostile_text, st.just("1/\u00b3"))),
    hostile_text,
)


@FUZZ
@given(st.lists(robots_lines, max_size=12), st.sampled_from(["/", "/private/x", "/a?b=c"]))
def test_any_robots_txt_gives_a_decision(lines, path):
  rules = RobotsRules("parsed", "\n".join(lines))
  assert isinstance(rules.allows("http://example.com" + path, "gemma-forge-bot"), bool)
  delay = rules.crawl_delay("gemma-forge-bot")
  assert delay is None or delay >= 0
