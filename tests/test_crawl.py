"""Tests of the crawl job against tests/hostile_server.py, a misbehaving server on 127.0.0.1.

Only loopback is ever contacted: private addresses are allowed with --allow_private_addresses for
the crawls that must reach the test server, and every off-host link must stay unfetched. The
per_input layout (spill files instead of a shuffle of the pages) must write the default layout's
files byte for byte, under the multi-process runner too, and fail loudly on a damaged spill file.
"""

import base64
import glob
import gzip
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import zlib

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from warcio.archiveiterator import ArchiveIterator

from pipelines import common, crawl, crawl_safety, extract, spill
from pipelines.crawl_fetch import FetchConfig, Fetcher, HostState, RobotsRules, parse_retry_after
from pipelines.crawl_safety import BodyDecoder, Refused

sys.path.insert(0, os.path.dirname(__file__))
import hostile_server  # noqa: E402
from beam_runners import OTHER_RUNNERS  # noqa: E402
from hostile_server import PAGES, HostileServer  # noqa: E402

MIN_DELAY = 0.05
CRAWL_DELAY = 1  # robots.txt Crawl-delay of the "polite" server.
FAST_FLAGS = [
    "--max_depth=2", "--min_delay=%s" % MIN_DELAY, "--connect_timeout=1", "--read_timeout=0.5",
    "--total_timeout=1", "--backoff=0.05", "--max_retry_after=2", "--num_shards=2",
]

# Path on the hostile server -> the reason its URL must end with.
EXPECTED = {
    "/": "kept",
    "/page1": "kept",
    "/page2": "kept",  # gzip-encoded on the wire.
    "/page3": "kept",  # Depth 2.
    "/redirect": "kept",  # Stored under its final URL, /target.
    "/latin1": "kept",
    "/flaky": "kept",  # 500, then 200.
    "/throttled": "kept",  # 429 with Retry-After, then 200.
    "/private/secret": "robots_disallowed",
    "/loop/a": "redirect_loop",
    "/chain/0": "too_many_redirects",
    "/redirect-file": "scheme_not_allowed",
    "/slow": "timeout",
    "/bomb": "decompression_bomb",
    "/huge": "body_too_large",
    "/huge-chunked": "body_too_large",
    "/binary-html": "bad_content_type",
    "/image.png": "bad_content_type",
    "/no-type": "bad_content_type",
    "/always-500": "http_error",
    "/retry-after-too-long": "http_error",
    "/missing": "http_error",
    "/truncated": "connection_error",
    "/bad-gzip": "bad_encoding",
}


def _write_seeds(path, urls):
  path.write_text("# seeds\n\n" + "\n".join(urls) + "\n")
  return str(path)


def _read_warcs(directory):
  """{(type, uri): record headers + payload} of every WARC file, and the files' first types."""
  records, first_types = {}, []
  for name in sorted(os.listdir(directory)):
    if not name.endswith(".warc.gz"):
      continue
    with open(os.path.join(directory, name), "rb") as f:
      for i, record in enumerate(ArchiveIterator(f)):
        if i == 0:
          first_types.append(record.rec_type)
        if record.rec_type == "warcinfo":
          continue
        key = (record.rec_type, record.rec_headers.get_header("WARC-Target-URI"))
        assert key not in records, f"duplicate record {key}"
        records[key] = {
            "headers": dict(record.rec_headers.headers),
            "http": record.http_headers,
            "payload": record.content_stream().read(),
        }
  return records, first_types


def _read_log(directory):
  return {r["url"]: r for r in crawl.read_fetch_log(str(directory))}


@pytest.fixture(scope="module")
def servers():
  with HostileServer() as hostile, HostileServer(robots="error") as down, HostileServer(
      crawl_delay=CRAWL_DELAY
  ) as polite:
    yield {"hostile": hostile, "down": down, "polite": polite}


def _seed_urls(servers):
  return [
      servers["hostile"].origin + "/",
      servers["hostile"].origin + "/#top",  # Same URL once normalised.
      servers["down"].origin + "/page1",  # robots.txt answers 503: disallow all.
      servers["polite"].origin + "/page3",  # Links to /page4 (404) at depth 1.
      "file:///etc/passwd",
  ]


@pytest.fixture(scope="module")
def crawled(servers, tmp_path_factory):
  """Runs the crawl once (built from the module's pieces, to read its Beam counters)."""
  tmp = tmp_path_factory.mktemp("crawl")
  argv = ["--seeds=" + _write_seeds(tmp / "seeds.txt", _seed_urls(servers)),
          "--output_dir=" + str(tmp / "out"), "--allow_loopback", *FAST_FLAGS]
  args, options = crawl.parse_args(argv)
  seeds = crawl.read_seeds(args.seeds)
  config = crawl.config_from_args(args, seeds)
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    p = beam.Pipeline(options=options)
    outcomes, captures = crawl.crawl(p | beam.Create(seeds), config)
    crawl.write_outputs(outcomes, captures, tmp_dir, config)
    result = p.run()
    result.wait_until_finish()
  counters = {}  # One result per step that counts (ParseSeeds, Depth0/FetchHost, ...): summed.
  for c in result.metrics().query(MetricsFilter().with_namespace("crawl"))["counters"]:
    counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
  return {
      "dir": args.output_dir,
      "argv": argv,
      "stats": common.read_stats(args.output_dir),
      "log": _read_log(args.output_dir),
      "counters": counters,
      "requests": {name: list(server.requests) for name, server in servers.items()},
  }


# ----------------------------------------------------------------------------- the crawl


def test_every_url_gets_its_reason(crawled, servers):
  log = crawled["log"]
  origin = servers["hostile"].origin
  for path, reason in EXPECTED.items():
    assert log[origin + path]["reason"] == reason, (path, log[origin + path])
  assert log[servers["down"].origin + "/page1"]["reason"] == "robots_disallowed"
  assert log[servers["polite"].origin + "/page3"]["reason"] == "kept"
  assert log[servers["polite"].origin + "/page4"]["reason"] == "http_error"
  assert log["file:///etc/passwd"]["reason"] == "scheme_not_allowed"
  assert log[origin + "/redirect"]["final_url"] == origin + "/target"
  # The second seed spells the first one's URL: counted, naming it, and fetched once.
  duplicate = log[origin + "/#top"]
  assert duplicate["reason"] == "duplicate_seed" and origin + "/" in duplicate["detail"]
  assert [r.path for r in crawled["requests"]["hostile"]].count("/") == 1
  # Nothing else was attempted: not the off-site link, the nofollow link, mailto: or depth 3.
  assert len(log) == len(EXPECTED) + 5


def test_stats_and_counters_account_for_every_url(crawled):
  stats, log = crawled["stats"], crawled["log"]
  assert stats["stage"] == "crawl"
  assert stats["in"] == len(log) == stats["kept"] + stats["dropped_total"]
  reasons = [r["reason"] for r in log.values()]
  assert stats["kept"] == reasons.count("kept") == 9
  assert stats["dropped"] == {r: reasons.count(r) for r in set(reasons) - {"kept"}}
  assert stats["dropped"]["robots_disallowed"] == 2
  assert stats["dropped"]["bad_content_type"] == 3
  counters = crawled["counters"]
  assert counters["in"] == stats["in"] and counters["kept"] == stats["kept"]
  for reason, n in stats["dropped"].items():
    assert counters[f"dropped.{reason}"] == n
  assert os.path.exists(os.path.join(crawled["dir"], "_SUCCESS"))


def test_warc_holds_exact_pages_as_request_response_pairs(crawled, servers):
  records, first_types = _read_warcs(crawled["dir"])
  assert sorted(n for n in os.listdir(crawled["dir"]) if n.endswith(".warc.gz")) == [
      "web.00000-of-00002.warc.gz", "web.00001-of-00002.warc.gz"
  ]
  assert first_types == ["warcinfo", "warcinfo"]
  origin = servers["hostile"].origin
  expected_bodies = {origin + p: body for p, body in PAGES.items()}
  expected_bodies[servers["polite"].origin + "/page3"] = PAGES["/page3"]
  responses = {uri: r for (kind, uri), r in records.items() if kind == "response"}
  assert set(responses) == set(expected_bodies)
  for uri, body in expected_bodies.items():
    response, request = responses[uri], records[("request", uri)]
    assert response["payload"] == body, uri  # Latin-1 page byte for byte, gzip page decoded.
    headers = response["headers"]
    digest = "sha1:" + base64.b32encode(hashlib.sha1(body).digest()).decode()
    assert headers["WARC-Payload-Digest"] == digest
    assert headers["WARC-Block-Digest"].startswith("sha1:")
    assert headers["WARC-IP-Address"] == "127.0.0.1"
    assert headers["WARC-Date"].endswith("Z")
    assert headers["WARC-Concurrent-To"] == request["headers"]["WARC-Record-ID"]
    assert request["headers"]["WARC-Concurrent-To"] == headers["WARC-Record-ID"]
    assert response["http"].get_statuscode() == "200"
    assert response["http"].get_header("Content-Length") == str(len(body))
    assert request["http"].protocol == "GET"
  gzipped = responses[origin + "/page2"]["http"]
  assert gzipped.get_header("Content-Encoding") is None
  assert gzipped.get_header("X-Crawler-Content-Encoding") == "gzip"


def test_robots_and_scope_limit_what_is_requested(crawled):
  hostile = [r.path for r in crawled["requests"]["hostile"]]
  assert hostile[0] == "/robots.txt" and hostile.count("/robots.txt") == 1
  assert not any(p.startswith("/private/") for p in hostile)
  assert "/nofollow-target" not in hostile
  assert "/page4" not in hostile  # Linked only from /page3, at the depth limit.
  assert [r.path for r in crawled["requests"]["down"]] == ["/robots.txt"]
  # robots.txt is fetched once per origin, even across depth rounds.
  assert [r.path for r in crawled["requests"]["polite"]] == ["/robots.txt", "/page3", "/page4"]
  assert all(r.user_agent.startswith("gemma-forge-bot") for r in crawled["requests"]["hostile"])


def test_redirects_retries_and_give_ups(crawled):
  requests = crawled["requests"]["hostile"]
  paths = [r.path for r in requests]
  assert [p for p in paths if p.startswith("/chain/")] == [f"/chain/{i}" for i in range(6)]
  assert paths.count("/loop/a") == 1 and paths.count("/loop/b") == 1
  assert paths.count("/flaky") == 2
  assert paths.count("/always-500") == 3  # 1 + --max_retries.
  assert paths.count("/retry-after-too-long") == 1  # Retry-After beyond the cap: no retry.
  assert paths.count("/truncated") == 3  # A cut-off body is a connection error: retried.
  throttled = [r.at for r in requests if r.path == "/throttled"]
  assert len(throttled) == 2 and throttled[1] - throttled[0] >= hostile_server.RETRY_AFTER


def test_politeness_delay_between_requests_to_one_host(crawled):
  for name, delay in (("hostile", MIN_DELAY), ("polite", CRAWL_DELAY)):
    times = [r.at for r in crawled["requests"][name]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps and min(gaps) >= delay, (name, gaps)


def test_rerun_gives_the_same_records(crawled, servers, tmp_path):
  for server in servers.values():
    server.reset()  # /flaky and /throttled misbehave on the first request again.
  argv = [a for a in crawled["argv"] if not a.startswith("--output_dir")]
  stats = crawl.run(argv + ["--output_dir=" + str(tmp_path / "again")])
  assert stats == crawled["stats"]
  first, _ = _read_warcs(crawled["dir"])
  second, _ = _read_warcs(tmp_path / "again")
  assert {k: r["payload"] for k, r in first.items()} == {k: r["payload"] for k, r in second.items()}
  logs = [crawl.fetch_log_files(str(d)) for d in (crawled["dir"], tmp_path / "again")]
  assert [os.path.basename(p) for p in logs[0]] == [os.path.basename(p) for p in logs[1]]
  for a, b in zip(*logs):
    assert open(a, "rb").read() == open(b, "rb").read()


# ----------------------------------------------------------------------------- refusals


def test_private_addresses_and_tricks_refused_without_connecting(tmp_path):
  with HostileServer() as server:
    port = server.port
    seeds = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",  # Decimal 127.0.0.1.
        f"http://0x7f.1:{port}/",  # Hex, short form.
        f"http://0177.0.0.1:{port}/",  # Octal.
        f"http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped IPv6.
        f"http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",  # Cloud metadata (link-local).
        "http://10.0.0.1/",
        "http://0.0.0.0/",
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1/",
        "data:text/html,<p>hi</p>",
        "javascript:alert(1)",
        f"http://user:secret@127.0.0.1:{port}/",
    ]
    stats = crawl.run([
        "--seeds=" + _write_seeds(tmp_path / "seeds.txt", seeds),
        "--output_dir=" + str(tmp_path / "out"), "--min_delay=0",
    ])
    assert server.requests == []  # Not even robots.txt.
  log = _read_log(tmp_path / "out")
  assert stats["in"] == len(seeds) and stats["kept"] == 0
  assert stats["dropped"] == {"private_address": 10, "scheme_not_allowed": 5, "bad_url": 1}
  for seed in seeds[:10]:
    assert log[crawl_safety.normalize_url(seed)]["reason"] == "private_address", seed


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "192.0.2.1", "240.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1",
    "64:ff9b::7f00:1", "2002:7f00:1::1", "::127.0.0.1", "2001:db8::1",
])
def test_non_public_addresses_are_refused(address):
  ip = ipaddress.ip_address(address)
  assert crawl_safety.address_problem(ip, allow_private=False)
  with pytest.raises(Refused) as e:
    crawl_safety.resolve(address, 80, allow_private=False)
  assert e.value.reason == "private_address"


def test_public_addresses_pass_and_the_flag_opens_only_private_ranges():
  for public in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
    assert crawl_safety.address_problem(ipaddress.ip_address(public), False) is None
  assert crawl_safety.address_problem(ipaddress.ip_address("127.0.0.1"), True) is None
  for never in ("0.0.0.0", "::", "224.0.0.1", "ff02::1"):
    assert crawl_safety.address_problem(ipaddress.ip_address(never), True)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "0x7f000001", "127.1"])
def test_legacy_ip_literals_decode_to_loopback(host):
  assert crawl_safety.ip_literal(host) == ipaddress.ip_address("127.0.0.1")


def test_connection_is_pinned_to_the_checked_address(monkeypatch):
  """The name is resolved once per request and the socket goes to that IP, with Host = name."""
  real = socket.getaddrinfo
  lookups = []

  def fake_getaddrinfo(host, port, *args, **kwargs):
    if host == "pinned.test":
      lookups.append(host)
      return real("127.0.0.1", port, *args, **kwargs)
    return real(host, port, *args, **kwargs)

  monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
  with HostileServer() as server:
    url = f"http://pinned.test:{server.port}/page1"
    with pytest.raises(Refused) as e:  # Without the flag the loopback answer is refused.
      Fetcher(FetchConfig(min_delay=0)).fetch(url)
    assert e.value.reason == "private_address" and server.requests == []
    exchange = Fetcher(FetchConfig(min_delay=0, allow_private_addresses=True)).fetch(url)
    assert exchange.body == PAGES["/page1"] and exchange.ip == "127.0.0.1"
    assert [r.path for r in server.requests] == ["/robots.txt", "/page1"]
    assert {r.host for r in server.requests} == {f"pinned.test:{server.port}"}
    assert len(lookups) == 1 + 2  # The refused try, then one per request, none by http.client.


def test_robots_txt_status_rules():
  config = FetchConfig(min_delay=0, allow_private_addresses=True, total_timeout=2)
  with HostileServer(robots="error") as down, HostileServer(robots="missing") as missing:
    assert Fetcher(config).robots_for(down.origin).mode == "disallow_all"
    assert Fetcher(config).robots_for(missing.origin).mode == "allow_all"
  with HostileServer(crawl_delay=3) as rules:
    fetcher = Fetcher(config)
    robots = fetcher.robots_for(rules.origin)
    assert not robots.allows(rules.origin + "/private/x", config.user_agent)
    assert robots.allows(rules.origin + "/page1", config.user_agent)
    assert fetcher.delay_for(rules.origin) == 3
  # A server that is gone (connection refused) is unavailable: disallow all.
  assert Fetcher(config).robots_for(rules.origin).mode == "disallow_all"


def test_url_normalisation_and_schemes():
  norm = crawl_safety.normalize_url
  assert norm("HTTP://Example.COM:80/a b?q=1#frag") == "http://example.com/a%20b?q=1"
  assert norm("https://example.com") == "https://example.com/"
  assert norm("http://bücher.example/") == "http://xn--bcher-kva.example/"
  assert norm(norm("http://example.com/%7Efoo/ü")) == norm("http://example.com/%7Efoo/ü")
  for url, reason in [
      ("file:///etc/passwd", "scheme_not_allowed"), ("ftp://example.com/", "scheme_not_allowed"),
      ("gopher://example.com/", "scheme_not_allowed"), ("data:text/plain,x", "scheme_not_allowed"),
      ("javascript:alert(1)", "scheme_not_allowed"), ("example.com/page", "scheme_not_allowed"),
      ("http:///nohost", "bad_url"), ("http://example.com:99999/", "bad_url"),
      ("http://a@example.com/", "bad_url"), ("http://exa mple.com/", "bad_url"),
  ]:
    with pytest.raises(Refused) as e:
      norm(url)
    assert e.value.reason == reason, url


# ----------------------------------------------------------------------------- bodies


def _decode(data, encoding, max_bytes=1 << 20, ratio=100.0):
  decoder = BodyDecoder(encoding, max_bytes, ratio)
  for i in range(0, len(data), 4096):
    decoder.feed(data[i:i + 4096])
  return decoder.finish()


def test_gzip_bomb_is_stopped_after_a_few_kilobytes():
  decoder = BodyDecoder("gzip", 2 << 20, 100.0)
  bomb = hostile_server.gzip_bomb()
  fed = 0
  with pytest.raises(Refused) as e:
    for i in range(0, len(bomb), 1024):
      fed += 1024
      decoder.feed(bomb[i:i + 1024])
  assert e.value.reason == "decompression_bomb"
  assert fed <= 16 * 1024  # 2 MiB of zeros is about 2 KiB of gzip.


def test_decoding_gzip_deflate_and_limits():
  text = b"<p>" + os.urandom(2000).hex().encode() + b"</p>"
  assert _decode(gzip.compress(text) * 2, "gzip") == text * 2  # Two gzip members.
  assert _decode(zlib.compress(text), "deflate") == text  # zlib-wrapped, per RFC.
  raw = zlib.compressobj(wbits=-15)
  assert _decode(raw.compress(text) + raw.flush(), "deflate") == text  # Raw, seen in the wild.
  assert _decode(text, None) == text
  with pytest.raises(Refused, match="body_too_large"):
    _decode(gzip.compress(text), "gzip", max_bytes=100)  # Large, but not a bomb.
  with pytest.raises(Refused, match="bad_encoding"):
    _decode(gzip.compress(text)[:-20], "gzip")  # Truncated stream.
  with pytest.raises(Refused, match="unsupported_encoding"):
    BodyDecoder("br", 100, 100.0)


def test_binary_sniffing_and_media_types():
  assert crawl_safety.looks_binary(hostile_server.PNG_LIKE)
  assert not crawl_safety.looks_binary(PAGES["/latin1"])
  assert not crawl_safety.looks_binary("<p>hi</p>".encode("utf-16"))  # BOM: text.
  assert crawl_safety.media_type("Text/HTML; charset=utf-8") == "text/html"
  assert crawl_safety.media_type(None) == "application/octet-stream"


def test_retry_after_parsing():
  assert parse_retry_after("120") == 120
  assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # In the past.
  assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_bad_configuration_is_refused(tmp_path):
  seeds = _write_seeds(tmp_path / "seeds.txt", ["http://example.com/"])
  for flag in ("--max_depth=-1", "--total_timeout=0", "--max_pages=0", "--warc_prefix=a.b",
               "--num_shards=-1", "--num_fetch_log_shards=-1", "--target_warc_bytes=0",
               "--target_shard_bytes=0"):
    args, _ = crawl.parse_args([f"--seeds={seeds}", "--output_dir=x", flag])
    with pytest.raises(common.StageError, match=flag.split("=")[0]):
      crawl.config_from_args(args, ["http://example.com/"])
  empty = tmp_path / "empty.txt"
  empty.write_text("# nothing\n\n")
  with pytest.raises(common.StageError, match="no seed URLs"):
    crawl.read_seeds(str(empty))


def test_max_pages_is_a_per_origin_budget_across_rounds():
  with HostileServer() as server:
    origin = server.origin
    config = crawl.CrawlConfig(
        fetch=FetchConfig(min_delay=0, allow_private_addresses=True),
        allowed_hosts=frozenset({"127.0.0.1"}), max_depth=0, max_pages=2,
    )
    urls = [origin + "/page1", origin + "/page2", origin + "/page3"]
    # /page1 was attempted in an earlier round: it is skipped and uses one unit of the budget.
    element = (origin, {"urls": urls + [origin + "/page1"], "seen": [(urls[0], True)], "state": []})
    outputs = list(crawl.FetchHost(config, depth=0).process(element))
  outcomes = {o["url"]: o["reason"] for o in outputs if isinstance(o, dict)}
  assert outcomes == {urls[1]: "kept", urls[2]: "max_pages"}
  assert [r.path for r in server.requests] == ["/robots.txt", "/page2"]


def test_tls_certificates_are_verified_and_sni_is_the_host_name(monkeypatch, tmp_path):
  """A self-signed certificate is refused; the handshake went to the pinned IP with SNI = name."""
  cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
  subprocess.run(
      ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
       "/CN=pinned.test", "-keyout", key, "-out", cert],
      check=True, capture_output=True,
  )
  real = socket.getaddrinfo
  monkeypatch.setattr(
      socket, "getaddrinfo",
      lambda host, *a, **k: real("127.0.0.1" if host == "pinned.test" else host, *a, **k),
  )
  with HostileServer(tls=(cert, key)) as server:
    origin = f"https://pinned.test:{server.port}"
    known_robots = {origin: HostState(RobotsRules("allow_all"), 0.0)}
    fetcher = Fetcher(FetchConfig(min_delay=0, allow_private_addresses=True), known_robots)
    with pytest.raises(Refused) as e:
      fetcher.fetch(origin + "/page1")
    assert e.value.reason == "tls_error"
    assert server.sni_names == ["pinned.test"] and server.requests == []


# ----------------------------------------------------------------------------- malformed input
# Each case below once killed the whole crawl with a traceback and no output (issue 10).


def test_malformed_headers_charsets_and_urls_are_counted_not_fatal(tmp_path):
  with HostileServer(robots="malformed") as server:
    seeds = [server.origin + path for path in hostile_server.MALFORMED if path != "/malformed/linked"]
    stats = crawl.run([
        "--seeds=" + _write_seeds(tmp_path / "seeds.txt", seeds),
        "--output_dir=" + str(tmp_path / "out"), "--allow_loopback", *FAST_FLAGS])
    origin = server.origin
  log = _read_log(tmp_path / "out")
  for path, reason in hostile_server.MALFORMED.items():
    assert log[origin + path]["reason"] == reason, (path, log[origin + path])
  assert "http://[::1/x" in log[origin + "/malformed/location"]["detail"]
  assert stats["in"] == len(log) == stats["kept"] + stats["dropped_total"]
  records, _ = _read_warcs(tmp_path / "out")
  responses = {uri for kind, uri in records if kind == "response"}
  assert responses == {origin + p for p, r in hostile_server.MALFORMED.items() if r == "kept"}


def test_header_numbers_must_be_ascii_digits():
  for odd in ("\u00b2", "\u0661\u0662", "\uff11", "1e3", "-5", " "):
    assert parse_retry_after(odd) is None, odd
  assert parse_retry_after(" 7 ") == 7.0


def test_robots_lines_that_crashed_the_parser_are_ignored():
  rules = RobotsRules("parsed", "User-agent: *\nCrawl-delay: \u00b2\nRequest-rate: 1/\u00b3\n"
                      "Disallow: http://[bad\nDisallow: /private/\n")
  assert not rules.allows("http://example.com/private/x", "bot")
  assert rules.allows("http://example.com/public", "bot")
  assert rules.crawl_delay("bot") is None


def test_link_extraction_survives_malformed_base_and_links():
  from pipelines.crawl_fetch import Exchange
  page = (b'<base href="http://[::1"><a href="http://[bad/">x</a><a href="/ok">ok</a>'
          b'<a href="http://h:99999/">bad port</a>')
  exchange = Exchange("http://example.com/dir/page", "1.2.3.4", "", "", [], "HTTP/1.1", 200, "OK",
                      [("Content-Type", "text/html; charset=rot13")], page)
  assert crawl.extract_links(exchange) == ["http://example.com/ok"]


def test_loopback_flag_opens_loopback_only():
  for loopback in ("127.0.0.1", "127.5.6.7", "::1"):
    assert crawl_safety.address_problem(ipaddress.ip_address(loopback), False, True) is None
    assert crawl_safety.resolve(loopback, 80, False, allow_loopback=True) == [loopback]
  for other in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                "fc00::1", "fe80::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "0.0.0.0"):
    with pytest.raises(Refused) as e:
      crawl_safety.resolve(other, 80, False, allow_loopback=True)
    assert e.value.reason == "private_address", other
  args, _ = crawl.parse_args(["--seeds=s", "--output_dir=o", "--allow_loopback"])
  fetch = crawl.config_from_args(args, ["http://127.0.0.1/"]).fetch
  assert fetch.allow_loopback and not fetch.allow_private_addresses


def test_seeds_that_normalise_to_one_url_are_counted_as_duplicates(tmp_path):
  # Private addresses: refused before any connection, so nothing here touches the network.
  seeds = ["HTTP://10.0.0.1", "http://10.0.0.1/#frag", "http://10.0.0.1:80/",
           "http://10.0.0.1/", "http://10.0.0.1/", "http://10.0.0.2/"]
  stats = crawl.run(["--seeds=" + _write_seeds(tmp_path / "seeds.txt", seeds),
                     "--output_dir=" + str(tmp_path / "out"), "--max_depth=0"])
  assert stats["in"] == len(seeds)
  assert stats["dropped"] == {"duplicate_seed": 4, "private_address": 2}
  log = list(crawl.read_fetch_log(str(tmp_path / "out")))
  fetched = [r for r in log if r["reason"] == "private_address"]
  assert sorted(r["url"] for r in fetched) == ["http://10.0.0.1/", "http://10.0.0.2/"]
  duplicates = [r for r in log if r["reason"] == "duplicate_seed"]
  assert sorted(r["url"] for r in duplicates) == sorted(seeds[1:5])  # The first spelling goes on.
  assert all("http://10.0.0.1/" in r["detail"] for r in duplicates)


# ----------------------------------------------------------------------------- shard layouts
# --shard_layout=per_input sends the captures through spill files instead of a Beam shuffle; the
# output must be the by_size layout's, byte for byte. Only time differs between two crawls of the
# same servers (docs/crawl.md, Reruns), so these crawls run with every clock that reaches a file
# pinned: captures' WARC-Date, the warcinfo record's date and the servers' Date header.

PER_INPUT = ["--shard_layout=" + common.PER_INPUT]
PINNED_DATE = "2026-01-02T03:04:05Z"
PINNED_HTTP_DATE = "Fri, 02 Jan 2026 03:04:05 GMT"
# Imported by every Python process started with its folder on PYTHONPATH: the multi_processing
# runner's workers, where the test's in-process patches do not reach.
_PIN_WORKER_CLOCKS = f"""\
import sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from warcio.recordbuilder import RecordBuilder
from pipelines import crawl_fetch
crawl_fetch._warc_date = lambda: {PINNED_DATE!r}
RecordBuilder._make_warc_date = classmethod(lambda cls, use_micros=False: {PINNED_DATE!r})
"""


def _pin_clocks(mp, folder):
  """Pins the dates in this process (the in-process runner and the servers) and, through a
  ``sitecustomize`` on PYTHONPATH, in worker processes."""
  from warcio.recordbuilder import RecordBuilder
  from pipelines import crawl_fetch
  mp.setattr(crawl_fetch, "_warc_date", lambda: PINNED_DATE)
  mp.setattr(RecordBuilder, "_make_warc_date",
             classmethod(lambda cls, use_micros=False: PINNED_DATE))
  mp.setattr(http.server.BaseHTTPRequestHandler, "date_time_string",
             lambda self, timestamp=None: PINNED_HTTP_DATE)
  folder.mkdir()
  (folder / "sitecustomize.py").write_text(_PIN_WORKER_CLOCKS)
  paths = [str(folder), os.environ.get("PYTHONPATH", "")]
  mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))


def _files(directory):
  """{relative path: bytes} of every file under a directory."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = open(path, "rb").read()
  return out


@pytest.fixture(scope="module")
def layouts(servers, crawled, tmp_path_factory):
  """The crawl of ``crawled`` with pinned clocks, in both layouts and under the other runners;
  the paths ``spill.write`` wrote in this process (the per_input runs of the default runner and of
  the portable runner, whose loopback workers run here)."""
  tmp = tmp_path_factory.mktemp("layouts")
  argv = [a for a in crawled["argv"] if not a.startswith("--output_dir")]
  runs = {
      "by_size": [],
      "per_input": PER_INPUT,
      "per_input_multi_processing": PER_INPUT + OTHER_RUNNERS["multi_processing"],
      "by_size_portable": OTHER_RUNNERS["portable"],
      "per_input_portable": PER_INPUT + OTHER_RUNNERS["portable"],
  }
  spilled = []
  with pytest.MonkeyPatch.context() as mp:
    _pin_clocks(mp, tmp / "pin")
    real_write = spill.write
    mp.setattr(spill, "write", lambda path, rows: spilled.append(path) or real_write(path, rows))
    outputs = {}
    for name, flags in runs.items():
      for server in servers.values():
        server.reset()  # /flaky and /throttled misbehave on the first request again.
      outputs[name] = str(tmp / name)
      crawl.run(argv + ["--output_dir=" + outputs[name], *flags])
  return {"outputs": outputs, "spilled": spilled}


def test_per_input_layout_writes_the_same_bytes(layouts):
  outputs = {name: _files(path) for name, path in layouts["outputs"].items()}
  reference = outputs["by_size"]
  assert sorted(reference) == [
      "_SUCCESS", os.path.basename(common.shard_path("", crawl.FETCH_LOG_PREFIX, 0, 1)), "stats.json",
      "web.00000-of-00002.warc.gz", "web.00001-of-00002.warc.gz"]
  records, _ = _read_warcs(layouts["outputs"]["by_size"])
  assert len(records) == 2 * 9  # The nine kept pages, as in the unpinned crawl.
  for name, files in outputs.items():
    assert sorted(files) == sorted(reference), name
    for path, data in reference.items():
      assert files[path] == data, (name, path)


def test_per_input_spill_files_are_written_then_removed(layouts):
  for run in ("per_input", "per_input_portable"):
    tmp_dir = layouts["outputs"][run] + ".tmp-"
    spilled = [p for p in layouts["spilled"] if p.startswith(tmp_dir)]
    # One per (origin, round) with a kept page: hostile at depths 0, 1, 2, polite at depth 0.
    assert len(spilled) == len(set(spilled)) == 4, run
    assert all(f"/{crawl.SPILL_DIR}/" in p for p in spilled), run
    assert not glob.glob(tmp_dir + "*"), run  # The spill files went with it.
  assert len(layouts["spilled"]) == 8
  for name, path in layouts["outputs"].items():
    assert not os.path.exists(os.path.join(path, crawl.SPILL_DIR)), name


def _spilled_capture(server, tmp_path, config):
  """FetchHost run by hand on two pages of ``server``: its (origin hash, bytes, spill path)
  outputs."""
  spill_dir = tmp_path / "spill"
  spill_dir.mkdir()
  element = (server.origin, {"urls": [server.origin + "/page2", server.origin + "/page1"],
                             "seen": [], "state": []})
  outputs = list(crawl.FetchHost(config, depth=0, spill_dir=str(spill_dir)).process(element))
  return [o.value for o in outputs if getattr(o, "tag", None) == crawl.CAPTURES]


def test_a_truncated_or_missing_spill_file_is_a_spill_error(tmp_path):
  config = crawl.CrawlConfig(
      fetch=FetchConfig(min_delay=0, allow_loopback=True), allowed_hosts=frozenset({"127.0.0.1"}),
      max_depth=0, num_shards=1, shard_layout=common.PER_INPUT,
  )
  with HostileServer() as server:
    [(_, size, path)] = _spilled_capture(server, tmp_path, config)
  assert path == crawl.spill_path(str(tmp_path / "spill"), 0, server.origin)
  shard = 0
  writer = crawl.WriteWarcShard(str(tmp_path / "out"), config)
  [warc] = list(writer.process((shard, [None, path, path]), 1))  # A path twice is one file.
  with open(warc, "rb") as f:  # The reported size is the captures' bytes: the file less warcinfo.
    info = ArchiveIterator(f)
    next(iter(info))
    info.read_to_end()
    assert size == os.path.getsize(warc) - info.get_record_length()
  records, _ = _read_warcs(tmp_path / "out")
  assert sorted(uri for kind, uri in records if kind == "response") == [
      server.origin + "/page1", server.origin + "/page2"]
  os.remove(warc)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 5)
  with pytest.raises(spill.SpillError, match="truncated"):
    list(writer.process((shard, [path, None]), 1))
  assert not os.path.exists(warc)  # Checked before the WARC file is opened: no short file.
  os.remove(path)
  os.remove(path + spill.INDEX_SUFFIX)
  with pytest.raises(spill.SpillError, match="missing"):
    list(writer.process((shard, [path, None]), 1))


def test_a_spill_file_lost_during_the_job_fails_it(tmp_path, monkeypatch):
  """A spill file cut short between the fetch and the WARC writer fails the whole job: no output
  directory, no temporary one left."""
  real_write = spill.write

  def write_then_truncate(path, rows):
    index = real_write(path, rows)
    with open(path, "r+b") as f:
      f.truncate(index["bytes"] - 1)
    return index

  monkeypatch.setattr(spill, "write", write_then_truncate)
  with HostileServer() as server:
    seeds = _write_seeds(tmp_path / "seeds.txt", [server.origin + "/page1"])
    with pytest.raises(Exception, match="truncated"):
      crawl.run([f"--seeds={seeds}", f"--output_dir={tmp_path / 'out'}", "--allow_loopback",
                 "--max_depth=0", "--min_delay=0", *PER_INPUT])
  assert not os.path.exists(tmp_path / "out")
  assert not glob.glob(str(tmp_path / "out") + ".tmp-*")


def test_per_input_layout_needs_a_spill_directory():
  config = crawl.CrawlConfig(fetch=FetchConfig(), allowed_hosts=frozenset(),
                             shard_layout=common.PER_INPUT)
  with pytest.raises(common.StageError, match="spill directory"):
    crawl.crawl(beam.Pipeline() | beam.Create([]), config)


# ----------------------------------------------------------------------------- shard counts


def _capture_bytes(path):
  """Bytes of a WARC file's captures: all but its first record's (the warcinfo) gzip member."""
  with open(path, "rb") as f:
    records = ArchiveIterator(f)
    for i, _ in enumerate(records):
      if i == 1:
        return os.path.getsize(path) - records.get_record_offset()
  return 0


def _warc_files(directory):
  return sorted(glob.glob(os.path.join(directory, "*.warc.gz")))


def _origins_by_file(directory):
  """{WARC file name: the origins of its responses}."""
  out = {}
  for path in _warc_files(directory):
    with open(path, "rb") as f:
      uris = [r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(f)
              if r.rec_type == "response"]
    out[os.path.basename(path)] = {crawl_safety.origin_of(uri) for uri in uris}
  return out


def test_warc_files_and_fetch_log_shards_follow_the_data(tmp_path):
  """Without counts, the WARC files follow --target_warc_bytes and the fetch log's shards
  --target_shard_bytes: every file promised is written, each origin's pages in one file, no
  record lost or doubled, and both layouts write the same bytes."""
  with HostileServer() as a, HostileServer() as b, HostileServer() as c, \
      pytest.MonkeyPatch.context() as mp:
    _pin_clocks(mp, tmp_path / "pin")  # Same bytes from two crawls: docs/crawl.md, Reruns.
    origins = [a.origin, b.origin, c.origin]
    seeds = _write_seeds(tmp_path / "seeds.txt",
                         [o + p for o in origins for p in ("/", "/page1", "/page2", "/latin1")])
    base = [f"--seeds={seeds}", "--allow_loopback", "--max_depth=0", "--min_delay=0"]
    one = str(tmp_path / "one")
    stats = crawl.run(base + [f"--output_dir={one}"])  # The defaults: one file, one log shard.
    [warc] = _warc_files(one)
    [log] = crawl.fetch_log_files(one)
    assert warc.endswith("-of-00001.warc.gz") and log.endswith("-of-00001.jsonl")
    capture_bytes, log_bytes = _capture_bytes(warc), os.path.getsize(log)
    assert stats["kept"] == 12 and capture_bytes > 0
    warc_target, log_target = capture_bytes // 3 + 1, log_bytes // 4 + 1
    sized = {}
    for layout in common.SHARD_LAYOUTS:
      sized[layout] = str(tmp_path / layout)
      for server in (a, b, c):
        server.reset()
      assert crawl.run(base + [f"--output_dir={sized[layout]}", f"--shard_layout={layout}",
                               f"--target_warc_bytes={warc_target}",
                               f"--target_shard_bytes={log_target}"]) == stats
  assert _files(sized[common.BY_SIZE]) == _files(sized[common.PER_INPUT])
  out = sized[common.BY_SIZE]
  warcs = _warc_files(out)
  assert len(warcs) == common.shards_for(capture_bytes, warc_target) == 3
  assert crawl.warc_files(out) == warcs
  assert [os.path.basename(p) for p in warcs] == [
      os.path.basename(crawl.warc_path(out, "web", i, 3)) for i in range(3)]
  assert sum(_capture_bytes(p) for p in warcs) == capture_bytes
  by_file = _origins_by_file(out)
  assert sorted(o for found in by_file.values() for o in found) == sorted(origins)
  assert _read_warcs(out)[0].keys() == _read_warcs(one)[0].keys()
  logs = crawl.fetch_log_files(out)
  assert len(logs) == common.shards_for(log_bytes, log_target) == 4
  assert sum(os.path.getsize(p) for p in logs) == log_bytes
  for path in logs:
    urls = [json.loads(line)["url"] for line in open(path)]
    assert urls == sorted(urls)
  assert sorted(r["url"] for r in crawl.read_fetch_log(out)) == sorted(_read_log(one))
  # The readers refuse a log or WARC set with a file missing, or a crawl that did not finish.
  os.remove(logs[1])
  with pytest.raises(common.StageError, match="1 shard.s. missing"):
    list(crawl.read_fetch_log(out))
  assert extract.warc_input_files(out) == warcs
  # A stray file past the count (index >= N), or one not named as warc_path names them, is refused
  # by the shard check every stage directory gets (common.check_shards_complete).
  for stray, message in ((crawl.warc_path(out, "web", 3, 3), "shard index 3 >= its shard count 3"),
                         (crawl.warc_path(out, "web", 5, 2), "shard index 5 >= its shard count 2"),
                         (os.path.join(out, "web-00000-of-00003.warc.gz"), "is not named")):
    shutil.copy(warcs[0], stray)
    for reader in (crawl.warc_files, extract.warc_input_files):  # extract reads a crawl this way
      with pytest.raises(common.StageError, match=message):
        reader(out)
    os.remove(stray)
  assert crawl.warc_files(out) == warcs
  os.remove(warcs[2])
  for reader in (crawl.warc_files, extract.warc_input_files):
    with pytest.raises(common.StageError, match="1 shard.s. missing: .*web.00002-of-00003.warc.gz"):
      reader(out)
  os.remove(os.path.join(out, common.SUCCESS_MARKER))
  for reader in (crawl.fetch_log_files, crawl.warc_files, extract.warc_input_files):
    with pytest.raises(common.StageError, match="did not finish"):
      reader(out)
