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
