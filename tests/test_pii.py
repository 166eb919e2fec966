"""PII detection, redaction, the labelled-set floors and the Beam stage's accounting."""

import json
import os

import pytest

from pipelines import pii
from pipelines.labelled import pii_data


def _types(text):
  return [(m.type, m.value) for m in pii.find_pii(text)]


@pytest.mark.parametrize("text,pii_type,value", [
    ("Mail jane.roe@gmail.com now.", pii.EMAIL, "jane.roe@gmail.com"),
    ("See user@example.com.", pii.EMAIL, "user@example.com"),  # Policy: every email.
    ("From 93.184.216.34 today", pii.IP_ADDRESS, "93.184.216.34"),
    ("Ping 2606:4700:4700::1111 now", pii.IP_ADDRESS, "2606:4700:4700::1111"),
    ("Call +44 20 7946 0958 today", pii.PHONE, "+44 20 7946 0958"),
    ("Call (212) 555-0123 today", pii.PHONE, "(212) 555-0123"),
    ("Tel. 030 1234567", pii.PHONE, "030 1234567"),
    ("Appelez le 01 42 68 53 00.", pii.PHONE, "01 42 68 53 00"),
    ("Llame al +34 912 345 678.", pii.PHONE, "+34 912 345 678"),
    ("Card 4111 1111 1111 1111 ok", pii.CREDIT_CARD, "4111 1111 1111 1111"),
    ("Amex 3782-822463-10005 ok", pii.CREDIT_CARD, "3782-822463-10005"),
    ("SSN 123-45-6789 ok", pii.SSN, "123-45-6789"),
    ("ssn: 123456789", pii.SSN, "123456789"),
    ("IBAN DE89 3704 0044 0532 0130 00 ok", pii.IBAN, "DE89 3704 0044 0532 0130 00"),
    ("to GB82WEST12345698765432.", pii.IBAN, "GB82WEST12345698765432"),
    ("key AKIAIOSFODNN7EXAMPLE", pii.SECRET, "AKIAIOSFODNN7EXAMPLE"),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", pii.SECRET,
     "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("slack xoxb-123456789012-abcdefABCDEF", pii.SECRET, "xoxb-123456789012-abcdefABCDEF"),
    ("g AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", pii.SECRET,
     "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"),
    ('API_TOKEN="a8F3kd92LmQ0zPq7Xv"', pii.SECRET, "a8F3kd92LmQ0zPq7Xv"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", pii.SECRET,
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
])
def test_positive(text, pii_type, value):
  assert _types(text) == [(pii_type, value)]


@pytest.mark.parametrize("text", [
    "Python 3.11.2 was released on 2023-03-14.",
    "Bind to 127.0.0.1, 192.168.0.1, 10.0.0.5, 169.254.1.1 or 192.0.2.1; ::1 and fe80::1 too.",
    "The example prefix 2001:db8::8a2e:370:7334 is reserved for documentation.",
    "Slice x[1::2], time 12:30:45, MAC 00:1a:2b:3c:4d:5e.",
    "ISBN 978-3-16-148410-0 and 0-306-40615-2.",
    "See lines 120-480 and the years 1990-2000.",
    "uuid 123e4567-e89b-12d3-a456-426614174000 sha 3f786850e387550fdab836ed7e6dc881de23001b",
    "Mask 0x7fffffff, 4 294 967 295 values, 255.255.255.255 broadcast.",
    "Card-like 4111 1111 1111 1112 fails Luhn.",
    "Invalid SSNs 666-12-3456, 000-12-3456, 912-12-3456, 123-00-4567, 123-45-0000.",
    "Bad IBAN DE88 3704 0044 0532 0130 00 fails mod 97.",
    "password = os.environ.get('PASSWORD'); token: your_api_key_here_please",
    "Released 05/10/2004 21:15, version 1.2.3.4, see section 6.2.4.3 and novas==3.1.1.3.",
    "-rw-r--r-- 1 root root 64 2008-05-09 00:19 bar; Sat 23 Aug 2003 08 30 36 +0200; inode 2738404",
    "Class C: 192.168.0.x to 192.168.255.x.",
    "The table lists 1234567890 rows.",
])
def test_negative(text):
  assert _types(text) == []


def test_luhn():
  assert pii.luhn_valid("4111111111111111")
  assert pii.luhn_valid("378282246310005")
  assert not pii.luhn_valid("4111111111111112")
  assert not pii.luhn_valid("41111a1111111111")


def test_card_brand_needs_known_prefix_and_length():
  assert pii.card_brand("4111111111111111") == "visa"
  assert pii.card_brand("5555555555554444") == "mastercard"
  assert pii.card_brand("2221000000000009") == "mastercard"
  assert pii.card_brand("9111111111111111") is None  # No brand starts with 9.
  assert pii.card_brand("41111111111111") is None  # Visa has no 14-digit numbers.


def test_iban_mod97_and_length():
  assert pii.iban_valid("DE89370400440532013000")
  assert pii.iban_valid("GB82 WEST 1234 5698 7654 32")
  assert not pii.iban_valid("DE89370400440532013001")  # Checksum.
  assert not pii.iban_valid("DE8937040044053201300")  # DE IBANs have 22 characters.
  assert not pii.iban_valid("ZZ89370400440532013000")  # Unknown country.


def test_ssn_rules():
  assert pii.ssn_valid("123", "45", "6789")
  for area, group, serial in [("000", "12", "3456"), ("666", "12", "3456"), ("900", "12", "3456"),
                              ("123", "00", "4567"), ("123", "45", "0000")]:
    assert not pii.ssn_valid(area, group, serial)


def test_public_ip_ranges():
  assert pii.is_public_ip("8.8.8.8") and pii.is_public_ip("2606:4700:4700::1111")
  for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.0.1",
                  "192.0.2.1", "198.51.100.1", "203.0.113.1", "224.0.0.1", "::1", "fe80::1",
                  "2001:db8::1", "fc00::1", "not an ip"):
    assert not pii.is_public_ip(address), address


def test_pem_block_is_one_secret():
  text = "k:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAKIA\n-----END RSA PRIVATE KEY-----\nend"
  redacted, counts = pii.redact(text)
  assert redacted == "k:\n<SECRET>\nend" and counts == {"SECRET": 1}


def test_redact_replaces_with_typed_placeholders_and_counts():
  text = "a@b.io and c@d.io from 93.184.216.34"
  assert pii.redact(text) == ("<EMAIL> and <EMAIL> from <IP_ADDRESS>",
                              {"EMAIL": 2, "IP_ADDRESS": 1})


@pytest.fixture(scope="module")
def labelled():
  return pii_data.positives(4, seed=11) + pii_data.hard_negatives(4, seed=11)


def test_no_planted_value_survives_redaction(labelled):
  assert pii_data.leaks(labelled) == []


def test_precision_and_recall_floors(labelled):
  # Floors: 0.95 pooled and 0.9 per type. The full benchmark measures ~0.99+ (see
  # docs/pii_and_toxicity.md); a floor below that leaves room for Faker draws, not for bugs.
  counts = pii_data.evaluate(labelled)
  assert counts["ALL"].precision >= 0.95 and counts["ALL"].recall >= 0.95, counts["ALL"]
  for pii_type in pii.PII_TYPES:
    assert counts[pii_type].tp > 0, pii_type
    assert counts[pii_type].precision >= 0.9, (pii_type, counts[pii_type])
    assert counts[pii_type].recall >= 0.9, (pii_type, counts[pii_type])


def test_config_density_rule():
  config = pii.PiiConfig(max_hits=20, min_words_per_hit=50, density_min_hits=3)
  assert not config.too_much(1, 5)  # One email in a short page: redact, keep.
  assert config.too_much(3, 100)
  assert not config.too_much(3, 200)
  assert config.too_much(21, 100000)
  with pytest.raises(ValueError):
    pii.PiiConfig(density_min_hits=0)


@pytest.mark.parametrize("text", [
    "See section 5.10.2.1 for the details.",
    "Paragraaf 14.3.4.1 beschrijft de installatie.",
    "Kapitel 12.4.1.3 und Abschnitt 3.17.2.8 erklären das.",
    "Free Software Foundation, Inc., 51 Franklin Street, Fifth Floor, Boston, MA 02110-1301 USA",
    "Mountain View, CA 94043-1351",
    "ZIP code: 10001-2345",
])
def test_section_numbers_and_zip4_codes_are_not_pii(text):
  assert pii.find_pii(text) == [], text


def test_small_dotted_numbers_count_as_addresses_after_an_address_word():
  assert _types("ping 20.1.5.3 to check") == [(pii.IP_ADDRESS, "20.1.5.3")]
  assert _types("The server at 93.184.216.34 answered.") == [(pii.IP_ADDRESS, "93.184.216.34")]
  # A 5-4 digit shape without a state code before it stays a phone number.
  assert _types("Tel. 06151-1234") == [(pii.PHONE, "06151-1234")]


def test_the_default_cap_is_relative_to_length():
  config = pii.PiiConfig()
  words_per_address = 400  # One mailing-list address every ~400 words: a long, good page.
  assert not config.too_much(40, 40 * words_per_address)
  assert config.too_much(40, 40 * 20)  # A directory: one address every 20 words.
  assert pii.PiiConfig(max_hits=20).too_much(40, 40 * words_per_address)  # Opt-in absolute cap.


# ----------------------------------------------------------------------------- Beam stage


def _write_stage_dir(path, lines):
  os.makedirs(path)
  with open(os.path.join(path, "docs-00000-of-00001.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")
  open(os.path.join(path, "_SUCCESS"), "w").close()


def _read_dir(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), path)] = f.read()
  return out


def test_beam_stage_accounting_drop_and_rerun(tmp_path):
  prose = " ".join(["The module reads configuration files and validates them."] * 10)
  heavy = " ".join(f"user{i}@mail.com" for i in range(25))
  docs = [
      {"id": "a" * 16, "text": prose + " Contact jane@corp.com.", "scores": {"q": 1.0}},
      {"id": "b" * 16, "text": prose},
      {"id": "c" * 16, "text": heavy},
  ]
  _write_stage_dir(tmp_path / "in", [json.dumps(d) for d in docs] + ["{not json"])
  argv = [f"--input={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}", "--num_shards=2"]
  stats = pii.main(argv)
  assert stats["in"] == 4 == stats["kept"] + stats["dropped_total"]
  assert stats["kept"] == 2 and stats["dropped"] == {"too_much_pii": 1, "bad_json": 1}
  kept = {}
  for shard in ("docs-00000-of-00002.jsonl", "docs-00001-of-00002.jsonl"):
    for line in (tmp_path / "out" / shard).read_text().splitlines():
      kept[json.loads(line)["id"]] = json.loads(line)
  assert kept["a" * 16]["text"].endswith("Contact <EMAIL>.")
  assert kept["a" * 16]["pii"] == {"EMAIL": 1} and kept["b" * 16]["pii"] == {}
  assert kept["a" * 16]["scores"] == {"q": 1.0}
  rejects = (tmp_path / "out" / "rejects" / "rejects-00000-of-00001.jsonl").read_text()
  assert "user1@mail.com" not in rejects  # Rejects hold the redacted text.
  first = _read_dir(tmp_path / "out")
  pii.main(argv)
  assert _read_dir(tmp_path / "out") == first


# ----------------------------------------------------------------------------- fast paths


def _secrets_without_gates(text):
  """Every secret pattern run on the whole text, no pre-checks (the reference)."""
  found = []
  for vendor in pii._VENDOR_PATTERNS:
    found += [(m.start, m.end) for m in pii._vendor_matches(vendor, text)]
  for _, pattern in pii._SECRET_RES:
    found += [(m.start(), m.end()) for m in pattern.finditer(text)]
  found += [(m.start(1), m.end(1)) for m in pii._AWS_SECRET_RE.finditer(text)]
  found += [(m.start(1), m.end(1)) for m in pii._ASSIGNMENT_RE.finditer(text)
            if pii._looks_random(m.group(1))]
  return sorted(found)


_KEY_NAMES = [
    "api_key", "api-key", "apikey", "APIKEY", "secret", "secret_key", "secret-key", "secretkey",
    "client_secret", "client-secret", "access_token", "access-token", "auth_token", "auth-token",
    "bearer", "token", "password", "passwd", "pwd", "DB_PASSWORD_PROD", "x.my-Token_2",
    "SECRET_\u212aEY", "api_\u212aey", "\u017fecret", "pa\u017f\u017fword",  # Kelvin sign, long s.
]


@pytest.mark.parametrize("name", _KEY_NAMES)
@pytest.mark.parametrize("template", ["{} = 'Zx9qL2mN8vB4cR7tY1w3'", '"{}": "Zx9qL2mN8vB4cR7tY1w3"',
                                      "{}:Zx9qL2mN8vB4cR7tY1w3", "{}=\n  Zx9qL2mN8vB4cR7tY1w3"])
def test_secret_pre_checks_never_skip_a_match(name, template):
  text = "Config: " + template.format(name) + " end"
  spans = [(m.start, m.end) for m in pii._find_secrets(text)]
  assert spans == _secrets_without_gates(text)
  assert spans == [(text.index("Zx9q"), text.index("Zx9q") + 20)]


def test_secret_pre_checks_agree_with_full_scans_on_labelled_texts():
  texts = [e.text for e in pii_data.positives(3) + pii_data.hard_negatives(2)]
  texts += ["AWS secret: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "no keys here", ""]
  texts += [text for text, _ in _vendor_secret_texts()]
  texts += ["AWS_TOKEN='wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'", "key \u212aey aws K\u0131"]
  for text in texts:
    assert sorted((m.start, m.end) for m in pii._find_secrets(text)) == \
        _secrets_without_gates(text), text
  assert any(_secrets_without_gates(t) for t in texts)  # The check saw real secrets.


def test_independent_secret_set_is_seeded_and_counts_leaks_by_what_survives_redaction():
  from pipelines.labelled import secrets_independent
  first = secrets_independent.examples(per_format=3, seed=1)
  assert first == secrets_independent.examples(per_format=3, seed=1)
  assert first != secrets_independent.examples(per_format=3, seed=2)
  assert {name for name, _, _ in first} == set(secrets_independent.FORMATS)
  assert all(value in text for _, text, value in first)
  table = secrets_independent.recall(per_format=3, seed=1)
  for name, row in table.items():
    expected = sum(value not in pii.redact(text)[0] for n, text, value in first if n == name)
    assert row["total"] == 3 and row["found"] <= expected  # Found: not even 8 characters survive.


# ----------------------------------------------------------------------------- vendor key formats
# Written from each vendor's documentation of its key format (random bodies, seeded); these
# formats have no pattern of the project's own, so they are found only through detect-secrets.

import random
import string

_ALNUM = string.ascii_letters + string.digits


def _random(rng, alphabet, n):
  return "".join(rng.choice(alphabet) for _ in range(n))


def _vendor_secret_texts():
  """(text, secret) pairs: each secret in a sentence or config line."""
  import base64
  rng = random.Random(20261203)
  b64url = _ALNUM + "-_"

  def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

  jwt = ".".join([b64(b'{"alg":"RS256","typ":"JWT"}'), b64(b'{"sub":"42","name":"Ann"}'),
                  _random(rng, b64url, 86)])
  pgp_body = "\n".join(_random(rng, _ALNUM + "+/", 64) for _ in range(4))
  pgp = ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n" + pgp_body + "\n=" +
         _random(rng, _ALNUM, 4) + "\n-----END PGP PRIVATE KEY BLOCK-----")
  stripe = "sk_live_" + _random(rng, _ALNUM, 24)
  sendgrid = "SG." + _random(rng, b64url, 22) + "." + _random(rng, b64url, 43)
  webhook = ("https://hooks.slack.com/services/T" + _random(rng, string.ascii_uppercase, 8) + "/B" +
             _random(rng, string.ascii_uppercase + string.digits, 10) + "/" + _random(rng, _ALNUM, 24))
  gitlab = "glpat-" + _random(rng, b64url, 20)
  return [
      (f"Our payments broke after I rotated the key; the old one was {stripe}, now revoked.", stripe),
      (f"export SENDGRID_API_KEY='{sendgrid}'", sendgrid),
      (f"Alerts go to {webhook} (the #ops channel).", webhook),
      (f"Authorization: Bearer {jwt}\nAccept: application/json", jwt),
      (f"He pasted his whole key into the issue:\n{pgp}\nCan someone delete this?", pgp),
      (f"git clone https://oauth2:{gitlab}@gitlab.example.com/group/app.git", gitlab),
  ]


@pytest.mark.parametrize("text,secret", _vendor_secret_texts())
def test_vendor_key_formats_are_redacted_whole(text, secret):
  redacted, counts = pii.redact(text)
  assert counts.get(pii.SECRET, 0) >= 1
  # No part of the value survives: not its distinctive tail, not even a 6-character run.
  assert not any(secret[i:i + 6] in redacted for i in range(len(secret) - 5)
                 if not set(secret[i:i + 6]) & set("/:.")), redacted
  # And the prose around it does.
  outside = text.replace(secret, "\0").split("\0")
  assert all(part in redacted for part in outside), redacted


def test_a_secret_inside_a_url_is_replaced_and_the_url_kept():
  text = "DATABASE_URL=postgres://app:Wq3rT8zLm2Xc@db.example.org:5432/app"
  assert pii.redact(text)[0] == "DATABASE_URL=postgres://app:<SECRET>@db.example.org:5432/app"


def test_a_key_name_group_redacts_the_value_not_the_name():
  text = 'aws_token = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"'
  assert pii.redact(text)[0] == 'aws_token = "<SECRET>"'


def test_a_key_cut_off_before_its_end_line_is_redacted_up_to_the_prose():
  body = "\n".join(_random(random.Random(5), _ALNUM + "+/", 70) for _ in range(3))
  text = f"My key:\n-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\nWhat did I do wrong?"
  assert pii.redact(text)[0] == "My key:\n<SECRET>\nWhat did I do wrong?"


@pytest.mark.parametrize("text", [
    "Each session gets a token; keep the token secret and the API key in a vault.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 was retried by the worker.",
    "A PEM file starts with BEGIN RSA PRIVATE KEY and ends with the matching END line.",
    "Set STRIPE_KEY in the environment; live keys start with sk_live_ and test keys with sk_test_.",
    "SKIPPED: ACCEPTANCE tests for APPLICATION servers; see https://example.com/path/to/page.",
    "Reach the webhook docs at https://api.slack.com/messaging/webhooks for details.",
    "Call me at 10:30, meeting 2023-10-05; build 20231005:release-candidate-number-two-final.",
    "WWW authorization is supported: try wget http://user:password@hostname/ or ftp://foo:bar@h/.",
])
def test_words_about_keys_and_ids_are_not_secrets(text):
  assert [m for m in pii.find_pii(text) if m.type == pii.SECRET] == [], text


def test_every_vendor_pattern_with_a_group_says_what_the_group_holds():
  # A detect-secrets upgrade that adds a pattern with groups must be classified (value or vendor
  # prefix), or its spans would be wrong.
  for vendor in pii._VENDOR_PATTERNS:
    if vendor.regex.groups:
      assert vendor.plugin in pii._VALUE_GROUP_PLUGINS | pii._PREFIX_GROUP_PLUGINS, vendor.plugin
  plugins = {vendor.plugin for vendor in pii._VENDOR_PATTERNS}
  assert {"StripeDetector", "SendGridDetector", "SlackDetector", "JwtTokenDetector",
          "PrivateKeyDetector", "GitLabTokenDetector", "TwilioKeyDetector"} <= plugins
  assert not plugins & pii._NOT_SECRET_PLUGINS
  assert not {"KeywordDetector", "Base64HighEntropyString", "HexHighEntropyString"} & plugins


def test_required_literals_are_read_off_the_parse_tree():
  import re
  assert pii._required_literals(re.compile(r"[a-z]+_(?:KEY|TOK)[0-9]{4}")) == ("_KEY", "_TOK")
  assert pii._required_literals(re.compile(r"x{2}abc\d+wxyz0")) == ("wxyz0",)
  assert pii._required_literals(re.compile(r"(?i)Live(_|-)Key\d")) == ("live",)
  assert pii._required_literals(re.compile(r"(?:ab|)cd\d")) == ("cd",)  # "ab" is optional.
  assert pii._required_literals(re.compile(r"[MN][a-z]{20}\.[a-z]{6}")) == ()
  assert pii._required_literals(re.compile(r"(?:a+b)?z")) == ()


def test_a_vendor_prefix_inside_a_longer_run_is_not_a_key():
  # The library's patterns have no left boundary; a key id in the middle of a base64 run is data.
  assert _types("content: Zm9vYmFyAKIAIOSFODNN7EXAMPLE==") == []
  assert _types("key AKIAIOSFODNN7EXAMPLE") == [(pii.SECRET, "AKIAIOSFODNN7EXAMPLE")]


def test_a_key_header_with_no_key_after_it_is_prose():
  assert _types("The file begins with\n-----BEGIN OPENSSH PRIVATE KEY-----\n\nand nothing else.") == []


def test_pem_labels_without_a_library_header_are_still_blocks():
  body = "\n".join(_random(random.Random(9), _ALNUM + "+/", 64) for _ in range(2))
  text = f"x\n-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}\n-----END ENCRYPTED PRIVATE KEY-----\ny"
  assert pii.redact(text) == ("x\n<SECRET>\ny", {"SECRET": 1})


def test_key_block_spans_start_at_the_dashes():
  body = "\n".join(_random(random.Random(3), _ALNUM + "+/", 64) for _ in range(2))
  for label in ("OPENSSH PRIVATE KEY", "RSA PRIVATE KEY"):
    text = f"key: -----BEGIN {label}-----\n{body}\n-----END {label}----- done"
    assert pii.redact(text)[0] == "key: <SECRET> done", label
  text = f"ssh2:\n---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: \"k\"\n{body}\n" \
         "---- END SSH2 ENCRYPTED PRIVATE KEY ----\nbye"
  assert pii.redact(text)[0] == "ssh2:\n<SECRET>\nbye"


# ----------------------------------------------------------------------------- review fixes


def test_a_telegram_token_in_the_bot_api_url_is_redacted_and_the_method_kept():
  # Bot API URLs put the token right after "bot": https://api.telegram.org/bot<id>:<35 chars>/method
  rng = random.Random(41)
  token = _random(rng, string.digits, 9) + ":AA" + _random(rng, _ALNUM + "_-", 33)
  text = f"curl https://api.telegram.org/bot{token}/sendMessage?chat_id=1"
  assert pii.redact(text)[0] == "curl https://api.telegram.org/bot<SECRET>/sendMessage?chat_id=1"
  assert pii.redact(f"token {token} here")[0] == "token <SECRET> here"
  assert pii.redact(f"robot{token}")[0] == "robot<SECRET>"  # Any word ending in "bot".
  assert pii.redact(f"x{token}")[0] == f"x{token}"  # Still no start inside another word.


@pytest.mark.parametrize("password", ["Tr0ub4dor3", "hunter2", "s3cr3tpw", "correcthorse"])
def test_a_real_url_password_is_redacted_even_when_it_does_not_look_random(password):
  text = f"DATABASE_URL=postgres://admin:{password}@localhost:5432/app"
  assert pii.redact(text)[0] == "DATABASE_URL=postgres://admin:<SECRET>@localhost:5432/app"


@pytest.mark.parametrize("placeholder", ["password", "PASSWORD", "pass", "passwd", "secret",
                                         "changeme", "xxx", "XXXXXXXX", "<password>", "%s",
                                         "{password}", "foo", "bar"])
def test_url_password_placeholders_are_not_secrets(placeholder):
  text = f"Connect with mysql://root:{placeholder}@localhost/app for the demo."
  assert [m for m in pii.find_pii(text) if m.type == pii.SECRET] == [], text


def test_url_password_placeholder_regex_refuses_only_placeholders():
  refused = pii._URL_PASSWORD_PLACEHOLDER_RE.fullmatch
  assert all(refused(v) for v in ("***", "${DB_PASSWORD}", "<pw>", "{pw}", "xXx"))
  assert not any(refused(v) for v in ("password1", "mypass", "xxxy", "s3cret", "%s%s"))


def _rsa_body(seed, lines=3):
  return "\n".join(_random(random.Random(seed), _ALNUM + "+/", 64) for _ in range(lines))


@pytest.mark.parametrize("after", ["\n\nThanks\nNote: rotate it\nBob",
                                   "\nThanks\nNote: rotate it\nBob",
                                   "\nNote: rotate it\nBob", "\nBob"])
def test_a_key_with_no_end_line_does_not_take_the_prose_after_it(after):
  text = "-----BEGIN RSA PRIVATE KEY-----\n" + _rsa_body(11) + after
  assert pii.redact(text)[0] == "<SECRET>" + after


def test_a_key_body_keeps_its_short_padded_last_line_and_pgp_checksum():
  rng = random.Random(12)
  body = _rsa_body(12) + "\n" + _random(rng, _ALNUM, 6) + "=="
  text = "-----BEGIN RSA PRIVATE KEY-----\n" + body + "\nThanks"
  assert pii.redact(text)[0] == "<SECRET>\nThanks"
  pgp = ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n" + _rsa_body(13) + "\n" +
         _random(rng, _ALNUM, 7) + "\n=" + _random(rng, _ALNUM, 4) + "\nDone")
  assert pii.redact(pgp)[0] == "<SECRET>\nDone"
  short = ("-----BEGIN RSA PRIVATE KEY-----\n" + _rsa_body(14) +
           "\nAb12\n-----END RSA PRIVATE KEY-----\nok")
  assert pii.redact(short)[0] == "<SECRET>\nok"


def test_a_putty_key_is_redacted_through_its_private_lines():
  rng = random.Random(15)
  text = ("notes:\nPuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: rsa-key-2026\n"
          "Public-Lines: 2\n" + _random(rng, _ALNUM + "+/", 64) + "\n" + _random(rng, _ALNUM, 9) +
          "\nPrivate-Lines: 2\n" + _random(rng, _ALNUM + "+/", 64) + "\n" +
          _random(rng, _ALNUM, 20) +
          "\nPrivate-MAC: " + _random(rng, "0123456789abcdef", 40) + "\nbye")
  assert pii.redact(text)[0] == "notes:\n<SECRET>\nbye"


@pytest.mark.parametrize("word", ["APEXLegends", "APACHE2License", "APACHE2", "AKCoreServices",
                                  "AP0Standard"])
def test_words_matching_the_artifactory_prefixes_are_not_secrets(word):
  text = f"See {word} for details"
  assert pii.redact(text)[0] == text


def test_an_artifactory_api_key_is_redacted():
  rng = random.Random(16)
  key = "AKC" + _random(rng, _ALNUM, 70)  # Artifactory API keys: "AKC" + 70 characters.
  assert pii.redact(f"X-JFrog-Art-Api: {key}\n")[0] == "X-JFrog-Art-Api: <SECRET>\n"


def test_an_npmrc_token_value_stops_at_whitespace():
  rng = random.Random(17)
  token = "npm_" + _random(rng, _ALNUM, 36)
  text = f"//registry.npmjs.org/:_authToken={token} # my comment here"
  assert pii.redact(text)[0] == "//registry.npmjs.org/:_authToken=<SECRET> # my comment here"


def test_an_aws_key_id_in_a_sigv4_credential_scope_keeps_the_scope():
  rng = random.Random(18)
  key_id = "AKIA" + _random(rng, string.ascii_uppercase + string.digits, 16)
  text = f"Authorization: AWS4-HMAC-SHA256 Credential={key_id}/20130524/us-east-1/s3/aws4_request"
  assert pii.redact(text)[0] == \
      "Authorization: AWS4-HMAC-SHA256 Credential=<SECRET>/20130524/us-east-1/s3/aws4_request"
  jwt = "eyJ" + _random(rng, _ALNUM, 20) + ".eyJ" + _random(rng, _ALNUM, 20) + "." + \
      _random(rng, _ALNUM, 10) + "/" + _random(rng, _ALNUM, 10)
  assert pii.redact(f"jwt {jwt} end")[0] == "jwt <SECRET> end"  # Variable length: still extended.


# Positive examples for every detect-secrets 1.5.0 pattern, built by hand from the vendors' key
# formats (random bodies): the gate test below checks each pattern's literals against them.
def _vendor_examples():
  rng = random.Random(19)
  up = string.ascii_uppercase + string.digits
  low = string.ascii_lowercase + string.digits
  hexl = "0123456789abcdef"
  r = lambda alphabet, n: _random(rng, alphabet, n)  # noqa: E731
  b64url = _ALNUM + "-_"
  examples = [prefix + r(up, 16) for prefix in ("AKIA", "ASIA", "ABIA", "ACCA", "A3TX")]
  examples += [
      'aws_secret_key = "' + r(_ALNUM + "/+", 40) + '"',
      " AKC" + r(_ALNUM, 70) + " ", " AP6" + r(_ALNUM, 40) + " ",
      "AccountKey=" + r(_ALNUM + "+/", 86) + "==",
      "https://deploy:" + r(_ALNUM, 12) + "@example.org",
      "M" + r(b64url, 23) + "." + r(b64url, 6) + "." + r(b64url, 27),  # Discord bot token.
      "ghp_" + r(_ALNUM, 36),
  ]
  examples += [prefix + "-" + r(b64url, 20)
               for prefix in ("glpat", "gldt", "glft", "glsoat", "glrt")]
  examples += [
      "GR1348941" + r(b64url, 20), "glcbt-" + r(b64url, 20), "glimt-" + r(b64url, 25),
      "glptt-" + r(b64url, 40), "glagent-" + r(b64url, 50), "gloas-" + r(b64url, 64),
      "eyJ" + r(_ALNUM, 16) + ".eyJ" + r(_ALNUM, 16) + "." + r(b64url, 20),
      r(hexl, 32) + "-us12",
      "//registry.npmjs.org/:_authToken=npm_" + r(_ALNUM, 36),
      "sk-" + r(_ALNUM, 20) + "T3BlbkFJ" + r(_ALNUM, 20),
  ]
  examples += [f"-----BEGIN {label}-----" for label in (
      "DSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "PGP PRIVATE KEY BLOCK",
      "PRIVATE KEY", "RSA PRIVATE KEY")]
  examples += ["---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----", "PuTTY-User-Key-File-2: ssh-rsa"]
  # PyPI tokens are macaroons: "pypi-" + base64 of the serialized header naming the index.
  import base64
  for index in (b"\x02\x01\x08\x70\x79\x70\x69\x2e\x6f\x72\x67", b"\x02\x01\x0dtest.pypi.org"):
    examples.append("pypi-" + base64.b64encode(index).decode().rstrip("=") + r(b64url, 80))
  examples += [
      "SG." + r(b64url, 22) + "." + r(b64url, 43),
      "xoxb-" + r(string.digits, 11) + "-" + r(string.digits, 12) + "-" + r(low, 24),
      "https://hooks.slack.com/services/T" + r(up, 8) + "/B" + r(up, 10) + "/" + r(_ALNUM, 24),
      "sq0csp-" + r(b64url, 43),
      "sk_live_" + r(_ALNUM, 24), "rk_live_" + r(_ALNUM, 24),
      r(string.digits, 9) + ":" + r(b64url, 35),  # Telegram bot token.
      "AC" + r(hexl, 32), "SK" + r(hexl, 32),
  ]
  return examples


# Patterns that detect-secrets 1.5.0 gives no literal to gate on (they are run on every text).
_UNGATED_PLUGINS = frozenset({"DiscordBotTokenDetector", "TelegramBotTokenDetector"})


def test_which_vendor_patterns_get_a_gate_is_pinned():
  # _required_literals reads CPython's private re._parser: a library or Python change that loses
  # a gate must fail here instead of silently running the pattern on every text.
  examples = _vendor_examples()
  ungated = {vendor.plugin for vendor in pii._VENDOR_PATTERNS if not vendor.literals}
  assert ungated == _UNGATED_PLUGINS
  for vendor in pii._VENDOR_PATTERNS:
    hits = [e for e in examples if vendor.regex.search(e)]
    assert hits, (vendor.plugin, vendor.regex.pattern)  # Every pattern has a positive example.
    if vendor.literals:
      assert any(literal in (pii._fold(e) if vendor.folded else e)
                 for e in hits for literal in vendor.literals), (vendor.plugin, vendor.literals)


def test_a_failing_parse_gates_nothing(monkeypatch):
  import re

  def broken(*args, **kwargs):
    raise TypeError("re._parser changed")

  import types
  # Replace pii's handle on the parser only: patching re._parser itself would break re.compile.
  monkeypatch.setattr(pii, "_sre", types.SimpleNamespace(parse=broken))
  assert pii._required_literals(re.compile(r"AKIA[A-Z0-9]{16}")) == ()


def test_vendor_plugins_are_taken_only_from_their_own_module():
  # A class imported into another plugin module (or one whose module name merely ends the same)
  # is not loaded twice.
  names = [(vendor.plugin, vendor.regex.pattern) for vendor in pii._VENDOR_PATTERNS]
  assert len(names) == len(set(names))
