"""A local HTTP server that misbehaves in every way the crawler must survive.

``HostileServer`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 with an ephemeral port and logs
every request (path, Host header, arrival time), so tests can check what the crawler did and did
not send. Each route is one hostile (or friendly) case; ``PAGES`` holds the exact bodies the good
routes serve, for comparison with what lands in the WARC files.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import ssl
import threading
import time

BOMB_MEMBER_BYTES = 16 * 1024 * 1024
BOMB_MEMBERS = 64  # 64 x 16 MiB = 1 GiB of zeros once decompressed.
HUGE_BYTES = 3 * 1024 * 1024
SLOW_INTERVAL = 0.2  # Seconds between the bytes of the endless slow body.
RETRY_AFTER = 1  # Seconds /throttled asks the crawler to wait.


def _html(title: str, links: list[str] = (), extra: str = "") -> bytes:
  anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
  return (
      f"<!doctype html><html><head><title>{title}</title></head>"
      f"<body><h1>{title}</h1><p>Text of {title}.</p>{extra}<ul>{anchors}</ul></body></html>"
  ).encode("utf-8")


INDEX_LINKS = [
    "/page1", "page2", "/private/secret", "/loop/a", "/chain/0", "/redirect", "/redirect-file",
    "/slow", "/bomb", "/huge", "/huge-chunked", "/latin1", "/binary-html", "/image.png",
    "/flaky", "/throttled", "/always-500", "/retry-after-too-long", "/missing", "/truncated",
    "/bad-gzip", "/no-type", "/page1#section", "http://example.com/offsite", "mailto:a@b.c",
    "javascript:alert(1)",
]

# The bodies of the pages the crawler must keep, by path.
PAGES = {
    "/": _html("Index", INDEX_LINKS, '<a rel="nofollow" href="/nofollow-target">skip me</a>'),
    "/page1": _html("Page one", ["/page3", "/"]),
    "/page2": _html("Page two (served gzipped)", ["/page1"]),
    "/page3": _html("Page three", ["/page4"]),  # Depth 2: its links are not followed.
    "/target": _html("Redirect target"),
    "/latin1": "<html><body><p>Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e</p></body></html>".encode("latin-1"),
    "/flaky": _html("Flaky page"),
    "/throttled": _html("Throttled page"),
}

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
# Lines that made urllib.robotparser raise: a Crawl-delay that passes str.isdigit() but not
# int(), and a rule path that urlparse refuses.
MALFORMED_ROBOTS = "Crawl-delay: \u00b2\nRequest-rate: 1/\u00b3\nDisallow: http://[bad\n".encode()
# Routes whose headers or links once killed the whole crawl (issue 10), and the reason each URL
# must now end with. Not linked from the index: the malformed-input test seeds them itself.
MALFORMED = {
    "/malformed/content-length": "kept",  # Content-Length "²³": isdigit() but not int().
    "/malformed/retry-after": "kept",  # 503 with Retry-After "²", then 200.
    "/malformed/charset": "kept",  # charset=hex names a bytes-to-bytes codec.
    "/malformed/location": "bad_url",  # Location: http://[::1/x (malformed IPv6).
    "/malformed/base": "kept",  # <base href="http://[::1"> and a link "http://[bad/".
    "/malformed/linked": "kept",  # Linked from /malformed/base and /malformed/charset.
}
PNG_LIKE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


@functools.cache
def gzip_bomb() -> bytes:
  """About 1 MiB that gunzips to 1 GiB of zeros (identical gzip members back to back)."""
  return gzip.compress(bytes(BOMB_MEMBER_BYTES), compresslevel=9, mtime=0) * BOMB_MEMBERS


@dataclasses.dataclass(frozen=True)
class Request:
  path: str
  host: str
  user_agent: str
  at: float  # time.monotonic() when the request line arrived.


class HostileServer:
  """Serves the routes below; ``robots`` is the robots.txt status/body mode of this origin.

  ``robots``: ``"rules"`` (ROBOTS + optional ``crawl_delay``), ``"malformed"``
  (MALFORMED_ROBOTS), ``"error"`` (503) or
  ``"missing"`` (404). ``tls``: ``(certfile, keyfile)`` to serve HTTPS instead of HTTP.
  """

  def __init__(self, robots: str = "rules", crawl_delay: int | None = None, tls=None):
    self.robots = robots
    self.crawl_delay = crawl_delay
    self.requests: list[Request] = []
    self.sni_names: list[str | None] = []  # Server names TLS clients asked for.
    self._lock = threading.Lock()
    self._hits: dict[str, int] = {}
    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
    if tls is not None:  # (certfile, keyfile): serve HTTPS.
      context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      context.load_cert_chain(*tls)
      context.sni_callback = lambda sock, name, ctx: self.sni_names.append(name)
      self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  @property
  def port(self) -> int:
    return self._httpd.server_address[1]

  @property
  def origin(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def __enter__(self) -> "HostileServer":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()

  def paths(self) -> list[str]:
    with self._lock:
      return [r.path for r in self.requests]

  def reset(self) -> None:
    with self._lock:
      self.requests.clear()
      self._hits.clear()

  def _record(self, handler) -> int:
    """Logs a request; returns how many times its path was requested before."""
    with self._lock:
      self.requests.append(
          Request(handler.path, handler.headers.get("Host", ""),
                  handler.headers.get("User-Agent", ""), time.monotonic())
      )
      count = self._hits.get(handler.path, 0)
      self._hits[handler.path] = count + 1
      return count

  def _handler_class(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass  # Keep test output quiet.

      def do_GET(self):
        previous_hits = server._record(self)
        try:
          server._route(self, previous_hits)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The crawler hung up on us, as it should for the hostile routes.

    return Handler

  # ------------------------------------------------------------------------- routes

  def _route(self, h, previous_hits: int) -> None:
    path = h.path
    if path == "/robots.txt":
      if self.robots == "error":
        return _send(h, 503, b"down", "text/plain")
      if self.robots == "missing":
        return _send(h, 404, b"no robots", "text/plain")
      if self.robots == "malformed":
        return _send(h, 200, MALFORMED_ROBOTS, "text/plain")
      body = ROBOTS + (f"Crawl-delay: {self.crawl_delay}\n".encode() if self.crawl_delay else b"")
      return _send(h, 200, body, "text/plain")
    if path == "/page2":
      return _send(h, 200, gzip.compress(PAGES[path], mtime=0), "text/html; charset=utf-8",
                   [("Content-Encoding", "gzip")])
    if path == "/latin1":  # Declares UTF-8, is Latin-1: must be stored byte for byte.
      return _send(h, 200, PAGES[path], "text/html; charset=utf-8")
    if path == "/flaky" and previous_hits == 0:
      return _send(h, 500, b"try again", "text/plain")
    if path == "/throttled" and previous_hits == 0:
      return _send(h, 429, b"slow down", "text/plain", [("Retry-After", str(RETRY_AFTER))])
    if path in PAGES:
      return _send(h, 200, PAGES[path], "text/html; charset=utf-8")
    if path.startswith("/private/"):
      return _send(h, 200, _html("Secret"), "text/html")
    if path == "/loop/a":
      return _redirect(h, "/loop/b")
    if path == "/loop/b":
      return _redirect(h, "/loop/a")
    if path.startswith("/chain/"):
      return _redirect(h, f"/chain/{int(path.rsplit('/', 1)[1]) + 1}")
    if path == "/redirect":
      return _redirect(h, "/target")
    if path == "/redirect-file":
      return _redirect(h, "file:///etc/passwd")
    if path == "/slow":
      return _slow(h)
    if path == "/bomb":
      return _send(h, 200, gzip_bomb(), "text/html", [("Content-Encoding", "gzip")])
    if path == "/huge":
      return _send(h, 200, b"<p>" + b"x" * HUGE_BYTES, "text/html")
    if path == "/huge-chunked":
      return _chunked(h, (b"<p>" + b"y" * 65536 for _ in range(HUGE_BYTES // 65536)))
    if path == "/binary-html":
      return _send(h, 200, PNG_LIKE, "text/html")
    if path == "/image.png":
      return _send(h, 200, PNG_LIKE, "image/png")
    if path == "/always-500":
      return _send(h, 500, b"broken", "text/plain")
    if path == "/retry-after-too-long":
      return _send(h, 503, b"come back tomorrow", "text/plain", [("Retry-After", "86400")])
    if path == "/truncated":
      h.send_response(200)
      h.send_header("Content-Type", "text/html")
      h.send_header("Content-Length", "1000")
      h.end_headers()
      h.wfile.write(b"<p>only ten")
      h.close_connection = True
      return None
    if path == "/bad-gzip":
      return _send(h, 200, b"\x1f\x8b\x08\x00not really gzip at all", "text/html",
                   [("Content-Encoding", "gzip")])
    if path == "/no-type":
      return _send(h, 200, b"<p>no content type</p>", None)
    if path.startswith("/malformed/"):
      return self._malformed(h, path, previous_hits)
    return _send(h, 404, b"not found", "text/plain")


  @staticmethod
  def _malformed(h, path: str, previous_hits: int) -> None:
    if path == "/malformed/content-length":
      h.send_response(200)
      h.send_header("Content-Type", "text/html")
      h.send_header("Content-Length", "\u00b2\u00b3")
      h.send_header("Connection", "close")
      h.end_headers()
      h.wfile.write(_html("Odd length"))
      h.close_connection = True
      return None
    if path == "/malformed/retry-after" and previous_hits == 0:
      return _send(h, 503, b"later", "text/plain", [("Retry-After", "\u00b2")])
    if path == "/malformed/charset":
      return _send(h, 200, _html("Hex charset", ["/malformed/linked"]), "text/html; charset=hex")
    if path == "/malformed/location":
      return _redirect(h, "http://[::1/x")
    if path == "/malformed/base":
      return _send(h, 200, _html("Bad base", ["/malformed/linked", "http://[bad/"],
                                 '<base href="http://[::1">'), "text/html")
    return _send(h, 200, _html(path), "text/html")


def _send(h, status: int, body: bytes, content_type: str | None, headers=()) -> None:
  h.send_response(status)
  if content_type:
    h.send_header("Content-Type", content_type)
  for name, value in headers:
    h.send_header(name, value)
  h.send_header("Content-Length", str(len(body)))
  h.send_header("Connection", "close")
  h.end_headers()
  h.wfile.write(body)
  h.close_connection = True


def _redirect(h, location: str) -> None:
  h.send_response(302)
  h.send_header("Location", location)
  h.send_header("Content-Length", "0")
  h.send_header("Connection", "close")
  h.end_headers()
  h.close_connection = True


def _chunked(h, chunks) -> None:
  h.send_response(200)
  h.send_header("Content-Type", "text/html")
  h.send_header("Transfer-Encoding", "chunked")
  h.end_headers()
  for chunk in chunks:
    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
  h.wfile.write(b"0\r\n\r\n")
  h.close_connection = True


def _slow(h) -> None:
  """An endless body, one byte every SLOW_INTERVAL seconds, until the client hangs up."""
  h.send_response(200)
  h.send_header("Content-Type", "text/html")
  h.end_headers()
  h.wfile.write(b"<p>")
  h.close_connection = True
  for _ in range(int(600 / SLOW_INTERVAL)):  # Gives up after 10 minutes, whatever happens.
    time.sleep(SLOW_INTERVAL)
    h.wfile.write(b"z")
    h.wfile.flush()
