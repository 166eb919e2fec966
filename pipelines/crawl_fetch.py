"""Fetching one host's pages safely and politely: the HTTP client of the crawl job.

One :class:`Fetcher` serves one host group (one call of the crawl DoFn). It

* resolves each host once, checks every address (:mod:`pipelines.crawl_safety`) and connects to
  exactly that address, sending the name in the Host header and TLS SNI;
* follows redirects itself, re-checking scheme, address and robots.txt on every hop;
* bounds each request by a connect timeout, a per-read timeout and a total deadline (a watchdog
  shuts the socket down when the deadline passes, so a server trickling bytes forever is cut off);
* caps the body on the wire and after decompression;
* retries connection errors, 429 and 5xx with exponential backoff (no jitter, so runs repeat)
  and honours Retry-After up to a cap;
* waits ``max(min_delay, robots.txt Crawl-delay)`` between requests to the same origin.

Why http.client and not urllib3: we open the socket ourselves (``socket.create_connection`` to the
checked IP, then ``ssl.wrap_socket`` with ``server_hostname``) and hand it to a plain
``HTTPConnection``, which then never resolves or connects on its own. That pins the connection to
the validated address in a few visible lines, and ``HTTPResponse.read1`` gives the body
incrementally (chunked encoding included). One connection per request (``Connection: close``)
keeps every hop's check simple.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import http.client
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.robotparser
from datetime import datetime, timezone
from typing import Callable

from pipelines.crawl_safety import (
    BodyDecoder,
    Refused,
    host_and_port,
    join_url,
    looks_binary,
    media_type,
    origin_of,
    request_target,
    resolve,
)

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_READ_CHUNK = 64 * 1024
# Robots.txt failures that mean "the server is unavailable" (disallow all, as Google does); any
# other failure means "there is no robots.txt" (allow all).
_ROBOTS_UNAVAILABLE = ("timeout", "connection_error", "bad_response", "tls_error")
# Refusals that concern the host itself: a page on it gets the same reason, not "robots".
_HOST_REFUSALS = ("private_address", "dns_error")


@dataclasses.dataclass(frozen=True)
class FetchConfig:
  """Limits of one crawl; the crawl job's flags of the same names set them."""

  user_agent: str = "gemma-forge-bot/0.1"
  allow_private_addresses: bool = False
  allow_loopback: bool = False  # 127.0.0.0/8 and ::1 only; other private ranges stay refused.
  connect_timeout: float = 10.0
  read_timeout: float = 20.0
  total_timeout: float = 60.0
  max_body_bytes: int = 2 * 1024 * 1024
  max_decompression_ratio: float = 100.0
  max_robots_bytes: int = 512 * 1024  # Google reads the first 500 KiB of robots.txt.
  max_redirects: int = 5
  max_retries: int = 2
  backoff: float = 1.0  # First retry waits this long, then 2x, 4x, ...
  max_retry_after: float = 30.0  # Longest Retry-After (and backoff) waited for; longer = give up.
  min_delay: float = 1.0
  max_crawl_delay: float = 30.0
  content_types: tuple[str, ...] = ("text/html", "application/xhtml+xml", "text/plain")


@dataclasses.dataclass(frozen=True)
class RobotsRules:
  """A host's robots.txt, in a form that can travel between pipeline rounds.

  ``mode`` is ``parsed`` (``text`` holds the file), ``allow_all`` (4xx: no robots.txt) or
  ``disallow_all`` (5xx, 429, timeout, connection failure: the server is unavailable).
  """

  mode: str
  text: str = ""
  note: str = ""

  @functools.cached_property
  def _parser(self) -> urllib.robotparser.RobotFileParser:
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(robots_lines(self.text))
    return parser

  def allows(self, url: str, user_agent: str) -> bool:
    if urllib.parse.urlsplit(url).path == "/robots.txt":
      return True
    if self.mode != "parsed":
      return self.mode == "allow_all"
    try:
      return self._parser.can_fetch(user_agent, url)
    except ValueError:  # A rule the parser cannot match against: be safe, do not fetch.
      return False

  def crawl_delay(self, user_agent: str) -> float | None:
    if self.mode != "parsed":
      return None
    delay = self._parser.crawl_delay(user_agent)
    return None if delay is None else float(delay)


@dataclasses.dataclass(frozen=True)
class HostState:
  """What the crawl remembers about an origin between depth rounds."""

  robots: RobotsRules
  last_request_at: float  # Wall-clock time (time.time()) the last request to it ended.


@dataclasses.dataclass(frozen=True)
class Exchange:
  """One HTTP request and its response, as written to the WARC file."""

  url: str
  ip: str
  date: str  # WARC-Date: when the response headers arrived, UTC, second precision.
  request_line: str
  request_headers: list[tuple[str, str]]
  http_version: str
  status: int
  reason: str
  headers: list[tuple[str, str]]
  body: bytes  # Decoded (Content-Encoding undone); empty unless the status was 2xx.

  def header(self, name: str) -> str | None:
    for key, value in self.headers:
      if key.lower() == name.lower():
        return value
    return None


class _Deadline:
  """A total wall-clock budget for one request, enforced by shutting the socket down.

  ``watch`` is called with the plain socket right after connecting and again with the TLS socket
  that replaces it, so a slow handshake is bounded too.
  """

  def __init__(self, seconds: float):
    self._end = time.monotonic() + seconds
    self._sock: socket.socket | None = None
    self._timer: threading.Timer | None = None

  def remaining(self) -> float:
    return max(0.0, self._end - time.monotonic())

  def expired(self) -> bool:
    return time.monotonic() >= self._end

  def watch(self, sock: socket.socket) -> None:
    self._sock = sock
    if self._timer is None:
      self._timer = threading.Timer(self.remaining(), self._shutdown)
      self._timer.daemon = True
      self._timer.start()

  def disarm(self) -> None:
    if self._timer is not None:
      self._timer.cancel()

  def _shutdown(self) -> None:
    try:
      self._sock.shutdown(socket.SHUT_RDWR)  # Blocked reads return at once.
    except OSError:
      pass  # Already closed.


_ASCII_NUMBER = re.compile(r"[0-9]+")
_ROBOTS_NUMERIC = ("crawl-delay", "request-rate")
_ROBOTS_PATHS = ("allow", "disallow")


def is_ascii_number(value: str) -> bool:
  """Digits 0-9 only. ``str.isdigit`` is also true for "²" and "١", which ``int`` refuses or
  reads as a number no HTTP header means."""
  return bool(_ASCII_NUMBER.fullmatch(value))


def robots_lines(text: str) -> list[str]:
  """The lines of a robots.txt without the ones that make ``urllib.robotparser`` raise.

  It calls ``int`` on any Crawl-delay / Request-rate that passes ``isdigit`` ("²" does) and
  ``urlparse`` on every rule path (``[`` makes it raise ValueError). Such a line is dropped,
  as Google's parser ignores lines it cannot read.
  """
  kept = []
  for line in text.splitlines():
    key, sep, value = line.split("#", 1)[0].partition(":")
    key, value = key.strip().lower(), value.strip()
    if sep and key in _ROBOTS_NUMERIC and not all(
        is_ascii_number(n.strip()) for n in value.split("/") if n.strip()):
      continue
    if sep and key in _ROBOTS_PATHS:
      try:
        urllib.parse.urlunparse(urllib.parse.urlparse(urllib.parse.unquote(value)))
      except ValueError:
        continue
    kept.append(line)
  return kept


def _warc_date() -> str:
  return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_retry_after(value: str | None) -> float | None:
  """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
  if not value:
    return None
  value = value.strip()
  if is_ascii_number(value):
    return float(value)
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError, OverflowError, IndexError):
    return None
  if when.tzinfo is None:
    when = when.replace(tzinfo=timezone.utc)
  return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class Fetcher:
  """Fetches URLs for one host group; keeps per-origin robots rules and request times.

  ``sleep`` and ``now`` are injectable so that unit tests can observe waits without waiting.
  """

  def __init__(
      self,
      config: FetchConfig,
      host_states: dict[str, HostState] | None = None,
      sleep: Callable[[float], None] = time.sleep,
      now: Callable[[], float] = time.time,
  ):
    self.config = config
    self._sleep = sleep
    self._now = now
    self.robots: dict[str, RobotsRules] = {}
    self.last_request_at: dict[str, float] = {}
    for origin, state in (host_states or {}).items():
      self.robots[origin] = state.robots
      self.last_request_at[origin] = state.last_request_at

  # --------------------------------------------------------------------------- pages

  def fetch(self, url: str) -> Exchange:
    """Fetches a page, following redirects; returns the final 200 response or raises Refused."""
    visited: list[str] = []
    current = url
    for _ in range(self.config.max_redirects + 1):
      if current in visited:
        raise Refused("redirect_loop", f"back to {current}")
      visited.append(current)
      if not self.robots_for(origin_of(current)).allows(current, self.config.user_agent):
        raise Refused("robots_disallowed", self.robots[origin_of(current)].note)
      exchange = self._get_with_retries(
          current, self.config.max_body_bytes, self._check_page_headers
      )
      if exchange.status in REDIRECT_STATUSES:
        current = self._redirect_target(exchange)
        continue
      if exchange.status != 200:
        raise Refused("http_error", f"HTTP {exchange.status}")
      if looks_binary(exchange.body):
        raise Refused("bad_content_type", "binary body")
      return exchange
    raise Refused("too_many_redirects", f"more than {self.config.max_redirects}")

  def _check_page_headers(self, status: int, content_type: str | None) -> None:
    if status == 200 and media_type(content_type) not in self.config.content_types:
      raise Refused("bad_content_type", media_type(content_type))

  @staticmethod
  def _redirect_target(exchange: Exchange) -> str:
    location = exchange.header("Location")
    if not location:
      raise Refused("http_error", f"HTTP {exchange.status} without Location")
    return join_url(exchange.url, location)

  # --------------------------------------------------------------------------- robots.txt

  def robots_for(self, origin: str) -> RobotsRules:
    """The origin's robots rules, fetched on first use with the same limits as pages.

    2xx: parsed. 4xx: allow all. 429, 5xx, timeout, connection or TLS failure: disallow all.
    Redirects are followed (same checks); a redirect error counts as "not found".
    """
    if origin not in self.robots:
      try:
        rules = self._fetch_robots(origin)
      except Refused as e:
        if e.reason in _HOST_REFUSALS:
          raise
        mode = "disallow_all" if e.reason in _ROBOTS_UNAVAILABLE else "allow_all"
        rules = RobotsRules(mode, note=f"robots.txt {e.reason}")
      self.robots[origin] = rules
    return self.robots[origin]

  def _fetch_robots(self, origin: str) -> RobotsRules:
    current = origin + "/robots.txt"
    visited: list[str] = []
    for _ in range(self.config.max_redirects + 1):
      if current in visited:
        raise Refused("redirect_loop", current)
      visited.append(current)
      exchange = self._get(current, self.config.max_robots_bytes, check_headers=None, truncate=True)
      status = exchange.status
      if status in REDIRECT_STATUSES:
        current = self._redirect_target(exchange)
      elif 200 <= status < 300:
        return RobotsRules("parsed", exchange.body.decode("utf-8", "replace"), "robots.txt")
      elif status == 429 or status >= 500:
        return RobotsRules("disallow_all", note=f"robots.txt HTTP {status}")
      else:
        return RobotsRules("allow_all", note=f"robots.txt HTTP {status}")
    raise Refused("too_many_redirects", "robots.txt")

  # --------------------------------------------------------------------------- politeness

  def delay_for(self, origin: str) -> float:
    """Seconds between requests to ``origin``: min_delay, raised by Crawl-delay up to a cap."""
    delay = self.config.min_delay
    rules = self.robots.get(origin)
    crawl_delay = rules.crawl_delay(self.config.user_agent) if rules else None
    if crawl_delay is not None:
      delay = max(delay, min(crawl_delay, self.config.max_crawl_delay))
    return delay

  def _wait_turn(self, origin: str) -> None:
    last = self.last_request_at.get(origin)
    if last is not None:
      wait = last + self.delay_for(origin) - self._now()
      if wait > 0:
        self._sleep(wait)

  # --------------------------------------------------------------------------- HTTP

  def _get_with_retries(self, url: str, max_bytes: int, check_headers) -> Exchange:
    """GET with bounded retries on connection errors, 429 and 5xx."""
    config = self.config
    for attempt in range(config.max_retries + 1):
      last_try = attempt == config.max_retries
      wait = min(config.backoff * 2**attempt, config.max_retry_after)
      try:
        exchange = self._get(url, max_bytes, check_headers)
      except Refused as e:
        if e.reason != "connection_error" or last_try:
          raise
        self._sleep(wait)
        continue
      if exchange.status != 429 and exchange.status < 500:
        return exchange
      if last_try:
        raise Refused("http_error", f"HTTP {exchange.status} after {attempt + 1} attempts")
      retry_after = parse_retry_after(exchange.header("Retry-After"))
      if retry_after is not None:
        if retry_after > config.max_retry_after:
          raise Refused("http_error", f"HTTP {exchange.status}, Retry-After beyond the cap")
        wait = max(wait, retry_after)
      self._sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")

  def _get(self, url: str, max_bytes: int, check_headers, truncate: bool = False) -> Exchange:
    """One GET over a fresh connection to a checked address. Raises Refused on any failure.

    ``check_headers(status, content_type)`` may refuse a response before its body is read.
    ``truncate`` keeps the first ``max_bytes`` instead of refusing a longer body (robots.txt).
    """
    host, port = host_and_port(url)
    addresses = resolve(host, port, self.config.allow_private_addresses,
                        self.config.allow_loopback)
    origin = origin_of(url)
    self._wait_turn(origin)
    deadline = _Deadline(self.config.total_timeout)
    try:
      return self._exchange(url, addresses, deadline, max_bytes, check_headers, truncate)
    except Refused:
      raise
    except Exception as e:  # Map every transport failure to a reason.
      raise self._failure(e, deadline) from None
    finally:
      deadline.disarm()
      self.last_request_at[origin] = self._now()

  def _exchange(self, url, addresses, deadline, max_bytes, check_headers, truncate) -> Exchange:
    netloc = urllib.parse.urlsplit(url).netloc
    host, port = host_and_port(url)
    sock, ip = self._connect(url, addresses, port, host, deadline)
    conn = http.client.HTTPConnection(host, port)  # Never connects itself: it gets our socket.
    conn.sock = sock
    try:
      target = request_target(url)
      headers = [
          ("Host", netloc),
          ("User-Agent", self.config.user_agent),
          ("Accept", "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1"),
          ("Accept-Encoding", "gzip, deflate"),
          ("Connection", "close"),
      ]
      conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
      for name, value in headers:
        conn.putheader(name, value)
      conn.endheaders()
      response = conn.getresponse()
      date = _warc_date()
      body = b""
      if 200 <= response.status < 300:
        if check_headers is not None:
          check_headers(response.status, response.getheader("Content-Type"))
        body = self._read_body(response, deadline, max_bytes, truncate)
      return Exchange(
          url=url,
          ip=ip,
          date=date,
          request_line=f"GET {target} HTTP/1.1",
          request_headers=headers,
          http_version="HTTP/1.0" if response.version == 10 else "HTTP/1.1",
          status=response.status,
          reason=response.reason,
          headers=response.getheaders(),
          body=body,
      )
    finally:
      conn.close()

  def _connect(self, url, addresses, port, host, deadline) -> tuple[socket.socket, str]:
    """Connects to the first reachable checked address; wraps TLS with the host name as SNI."""
    failure = Refused("connection_error", "no address")
    for ip in addresses:
      timeout = min(self.config.connect_timeout, deadline.remaining())
      try:
        sock = socket.create_connection((ip, port), timeout=timeout)
      except TimeoutError:
        failure = Refused("timeout", "connect")
        continue
      except OSError as e:
        failure = Refused("connection_error", f"connect: {e.__class__.__name__}")
        continue
      deadline.watch(sock)
      if url.startswith("https://"):
        try:
          sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as e:
          sock.close()
          if deadline.expired():
            raise Refused("timeout", "TLS handshake") from None
          raise Refused("tls_error", e.__class__.__name__) from None
        except OSError:
          sock.close()
          raise
        deadline.watch(sock)
      sock.settimeout(min(self.config.read_timeout, max(deadline.remaining(), 0.001)))
      return sock, ip
    raise failure

  def _read_body(self, response, deadline: _Deadline, max_bytes: int, truncate: bool) -> bytes:
    """Streams the body, capping wire bytes and decoded bytes.

    ``truncate`` keeps the first ``max_bytes`` of a longer body instead of refusing it.
    """
    declared = (response.getheader("Content-Length") or "").strip()
    if not truncate and is_ascii_number(declared) and int(declared) > max_bytes:
      raise Refused("body_too_large", f"Content-Length {declared}")
    decoder = BodyDecoder(
        response.getheader("Content-Encoding"), max_bytes, self.config.max_decompression_ratio
    )
    wire_bytes = 0
    while chunk := response.read1(_READ_CHUNK):
      wire_bytes += len(chunk)
      try:
        if wire_bytes > max_bytes:
          raise Refused("body_too_large", f"more than {max_bytes} bytes on the wire")
        decoder.feed(chunk)
      except Refused as e:
        if truncate and e.reason == "body_too_large":
          return decoder.finish(partial=True)
        raise
    # The body ended: because it was complete, or because the deadline shut the socket down?
    if deadline.expired():
      raise Refused("timeout", "total deadline")
    if response.length:  # http.client's count of Content-Length bytes that never came.
      raise Refused("connection_error", "body shorter than its Content-Length")
    return decoder.finish(partial=truncate)

  @staticmethod
  def _failure(error: Exception, deadline: _Deadline) -> Refused:
    if deadline.expired():
      return Refused("timeout", "total deadline")
    if isinstance(error, TimeoutError):
      return Refused("timeout", "read")
    if isinstance(error, (http.client.IncompleteRead, ConnectionError)):
      return Refused("connection_error", error.__class__.__name__)
    if isinstance(error, ssl.SSLError):
      return Refused("tls_error", error.__class__.__name__)
    if isinstance(error, http.client.HTTPException):
      return Refused("bad_response", error.__class__.__name__)
    if isinstance(error, OSError):
      return Refused("connection_error", error.__class__.__name__)
    raise error
