"""What the crawler agrees to fetch and keep: URLs, network addresses and response bodies.

Every check raises :class:`Refused` with the reason that ``stats.json`` counts, so one ``except``
in the fetcher turns any refusal into an accounted drop. Nothing here touches the network except
:func:`resolve`, which asks the system resolver once so that the fetcher can connect to exactly
the address that was checked (no second lookup that a DNS-rebinding server could answer
differently).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
import zlib

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Characters left as they are when a URL's path or query is percent-encoded: the RFC 3986
# reserved and unreserved sets plus "%", so existing escapes survive and a normalised URL
# normalises to itself.
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"

# Hosts made only of digits, hex digits, "x" and dots may be legacy IPv4 literals that
# inet_aton accepts ("2130706433", "0x7f.1", "0177.0.0.1") but ipaddress does not.
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)

# 64:ff9b::/96 (NAT64) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
  """A URL or response the crawler will not fetch or keep.

  ``reason`` is the key counted in ``stats.json`` (``dropped.<reason>``); ``detail`` is a short,
  run-independent explanation for the fetch log.
  """

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


# ----------------------------------------------------------------------------- URLs


def normalize_url(url: str) -> str:
  """Returns ``url`` in the one spelling used for dedup, robots checks and WARC target URIs.

  Lower-cases scheme and host, encodes international host names with IDNA, drops the default
  port and the fragment, and percent-encodes characters that may not appear in a request line.
  Refuses non-http(s) schemes (``scheme_not_allowed``) and URLs without a host, with an invalid
  port or with user credentials (``bad_url``).
  """
  try:
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
      raise Refused("scheme_not_allowed", repr(scheme or "(none)"))
    port = parts.port
    host = parts.hostname
  except ValueError as e:  # Bad port, bad IPv6 literal, ...
    raise Refused("bad_url", str(e)) from None
  if parts.username is not None or parts.password is not None:
    raise Refused("bad_url", "credentials in URL")
  if not host:
    raise Refused("bad_url", "no host")
  if not host.isascii():
    try:
      host = host.encode("idna").decode("ascii")
    except UnicodeError:
      raise Refused("bad_url", "host is not a valid IDNA name") from None
  if not re.fullmatch(r"[a-z0-9._:-]+", host):
    raise Refused("bad_url", "invalid character in host")
  netloc = f"[{host}]" if ":" in host else host
  if port is not None and port != DEFAULT_PORTS[scheme]:
    netloc += f":{port}"
  try:
    path = urllib.parse.quote(parts.path or "/", safe=_URL_SAFE)
    query = urllib.parse.quote(parts.query, safe=_URL_SAFE)
  except UnicodeEncodeError:  # A lone surrogate: no UTF-8 spelling to percent-encode.
    raise Refused("bad_url", "path or query is not valid Unicode") from None
  return urllib.parse.urlunsplit((scheme, netloc, path, query, ""))


def join_url(base: str, href: str) -> str:
  """``href`` resolved against ``base`` and normalised; Refused("bad_url") if either is malformed
  (``urljoin`` raises ValueError on a broken IPv6 host such as ``http://[::1``)."""
  try:
    joined = urllib.parse.urljoin(base, href.strip())
  except ValueError as e:
    raise Refused("bad_url", f"cannot resolve {href[:200]!r}: {e}") from None
  return normalize_url(joined)


def origin_of(url: str) -> str:
  """``scheme://host[:port]`` of a normalised URL: the unit of robots.txt and politeness."""
  parts = urllib.parse.urlsplit(url)
  return f"{parts.scheme}://{parts.netloc}"


def host_and_port(url: str) -> tuple[str, int]:
  parts = urllib.parse.urlsplit(url)
  return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]


def request_target(url: str) -> str:
  """The path and query sent on the request line."""
  parts = urllib.parse.urlsplit(url)
  return parts.path + (f"?{parts.query}" if parts.query else "")


# ----------------------------------------------------------------------------- addresses


def ip_literal(host: str) -> IPAddress | None:
  """The address a host written as an IP literal stands for, in any spelling; else None.

  Besides standard literals this decodes the legacy forms that C resolvers accept
  (``2130706433``, ``0x7f.1``, ``0177.0.0.1`` are all 127.0.0.1), so the check does not depend
  on how a particular resolver treats them.
  """
  try:
    return ipaddress.ip_address(host.strip("[]"))
  except ValueError:
    pass
  if _LEGACY_IPV4.match(host) and any(c.isdigit() for c in host):
    try:
      return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
      return None
  return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
  """IPv4 addresses that an IPv6 address routes to (mapped, 6to4, Teredo, NAT64)."""
  found = [ip.ipv4_mapped, ip.sixtofour]
  if ip.teredo:
    found.extend(ip.teredo)
  if ip in _NAT64:
    found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
  return [a for a in found if a is not None]


def address_problem(ip: IPAddress, allow_private: bool, allow_loopback: bool = False) -> str | None:
  """Why the crawler must not connect to ``ip``, or None if it may.

  Unspecified and multicast addresses are never web servers and are always refused. Otherwise,
  unless ``allow_private`` is set, only globally routable unicast addresses are accepted: this
  refuses private, loopback, link-local, shared (CGNAT), reserved and documentation ranges, in
  IPv4 and IPv6, including IPv6 forms that embed such an IPv4 address. ``allow_loopback`` opens
  the loopback addresses only (127.0.0.0/8 and ::1: a test server on this machine), and every
  other private range stays refused.
  """
  if ip.is_unspecified:
    return f"{ip} is unspecified"
  if ip.is_multicast:
    return f"{ip} is multicast"
  if allow_private:
    return None
  if allow_loopback and ip.is_loopback:
    return None
  if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or not ip.is_global:
    return f"{ip} is not a public address"
  if isinstance(ip, ipaddress.IPv6Address):
    for inner in _embedded_ipv4(ip):
      problem = address_problem(inner, allow_private)  # Loopback behind IPv6 is a trick: refused.
      if problem:
        return f"{ip} embeds {problem}"
  return None


def resolve(host: str, port: int, allow_private: bool, allow_loopback: bool = False) -> list[str]:
  """Resolves ``host`` once and returns its addresses, all checked; the caller connects to these.

  If any address the name resolves to is refused, the host is refused: a name that points at
  both public and private addresses is treated as hostile.
  """
  literal = ip_literal(host)
  if literal is not None:
    addresses = [literal]
  else:
    try:
      infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
      raise Refused("dns_error", f"{host}: {e.__class__.__name__}") from None
    addresses = []
    for info in infos:
      ip = ipaddress.ip_address(info[4][0].split("%")[0])
      if ip not in addresses:
        addresses.append(ip)
  for ip in addresses:
    problem = address_problem(ip, allow_private, allow_loopback)
    if problem:
      raise Refused("private_address", f"{host} -> {problem}")
  return [str(ip) for ip in addresses]


# ----------------------------------------------------------------------------- bodies


def media_type(content_type: str | None) -> str:
  """``text/html; charset=x`` -> ``text/html``; a missing header is ``application/octet-stream``

  (RFC 9110 section 8.3: a recipient may assume that when the type is not given).
  """
  if not content_type:
    return "application/octet-stream"
  return content_type.split(";", 1)[0].strip().lower()


# Bytes that never occur in text (WHATWG MIME Sniffing, "binary data byte").
_BINARY_BYTES = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])
_UTF16_BOMS = (b"\xfe\xff", b"\xff\xfe")


def looks_binary(body: bytes) -> bool:
  """True if the first KiB holds a byte that text never contains (UTF-16 with a BOM is text)."""
  if body.startswith(_UTF16_BOMS):
    return False
  return any(b in _BINARY_BYTES for b in body[:1024])


class BodyDecoder:
  """Undoes a Content-Encoding while the body streams in, never holding more than ``max_bytes``.

  zlib's ``max_length`` bounds each step's output, so a gzip bomb costs at most ``max_bytes`` of
  memory and stops after the first few kilobytes of input. Output beyond ``max_bytes`` is
  ``decompression_bomb`` when it expanded more than ``max_ratio`` times, else ``body_too_large``.
  Only gzip and deflate are supported (and advertised in Accept-Encoding).
  """

  def __init__(self, content_encoding: str | None, max_bytes: int, max_ratio: float):
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
      raise Refused("unsupported_encoding", repr(encoding))
    self._encoding = encoding
    self._max_bytes = max_bytes
    self._max_ratio = max_ratio
    self._in = 0
    self._out = bytearray()
    self._zlib = None  # Created on the first bytes (deflate's framing is sniffed from them).

  def feed(self, data: bytes) -> None:
    if self._encoding == "identity":
      self._in += len(data)
      self._append(data)
      return
    while data:
      if self._zlib is None:
        self._zlib = zlib.decompressobj(self._wbits(data))
      elif self._zlib.eof:  # gzip allows several members back to back.
        if not data.strip(b"\0"):
          return  # Zero padding after the last member, which some servers send.
        self._zlib = zlib.decompressobj(self._wbits(data))
      try:
        out = self._zlib.decompress(data, self._max_bytes + 1 - len(self._out))
      except zlib.error as e:
        raise Refused("bad_encoding", f"{self._encoding}: {e}") from None
      rest = self._zlib.unconsumed_tail or self._zlib.unused_data
      self._in += len(data) - len(rest)  # Only what was consumed counts towards the ratio.
      self._append(out)
      data = rest

  def finish(self, partial: bool = False) -> bytes:
    """The decoded body; with ``partial``, the first ``max_bytes`` of a body cut short."""
    if partial:
      return bytes(self._out[: self._max_bytes])
    if self._zlib is not None and not self._zlib.eof:
      raise Refused("bad_encoding", f"{self._encoding} stream is truncated")
    return bytes(self._out)

  def _wbits(self, data: bytes) -> int:
    if self._encoding != "deflate":
      return 16 + zlib.MAX_WBITS  # gzip framing.
    # "deflate" is zlib-wrapped per RFC 9110, but some servers send a raw deflate stream.
    zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS

  def _append(self, chunk: bytes) -> None:
    self._out += chunk
    if len(self._out) > self._max_bytes:
      ratio = len(self._out) / max(self._in, 1)
      if self._encoding != "identity" and ratio > self._max_ratio:
        raise Refused("decompression_bomb", f"expands more than {self._max_ratio:g}x")
      raise Refused("body_too_large", f"more than {self._max_bytes} bytes")
