"""A labelled PII set: Faker values planted into real sentences, plus hard negatives.

Each :class:`Example` is a text and the PII values planted in it (none for a negative). Values
come from Faker in six locales; backgrounds are stdlib docstring sentences; hard negatives are the
look-alikes that technical text is full of (versions, dates, UUIDs, hashes, ISBNs, private IPs,
card numbers that fail Luhn, invalid SSNs and IBANs, numeric tables). Everything is seeded, so
the set (and the figures in docs/pii_and_toxicity.md) are reproducible.
"""

from __future__ import annotations

import dataclasses
import random
import string

from pipelines import pii
from pipelines.labelled import sentences

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT")

# How a value is introduced; "{}" is the value. Half the phrases carry no keyword at all.
_CONTEXTS = {
    pii.EMAIL: ("Write to {} for details.", "Questions go to {}.", "({})"),
    pii.IP_ADDRESS: ("The request came from {}.", "Connect to {} instead.", "host {} answered"),
    pii.PHONE: ("Call {} for support.", "Phone: {}", "You can reach the office on {}."),
    pii.CREDIT_CARD: ("Card number {} was charged.", "Paid with {}.", "cc: {}"),
    pii.SSN: ("SSN {} is on file.", "Social security number: {}", "The applicant gave {}."),
    pii.IBAN: ("Transfer to {} by Friday.", "IBAN: {}", "Account {} was credited."),
    pii.SECRET: ("Set {} in the config.", "Use {} for the deploy job.", "{}"),
}


@dataclasses.dataclass(frozen=True)
class Example:
  text: str
  planted: tuple[tuple[str, str], ...]  # (type, value)


def _random_string(rng: random.Random, alphabet: str, n: int) -> str:
  return "".join(rng.choice(alphabet) for _ in range(n))


def _secret(rng: random.Random) -> tuple[str, str]:
  """A (text, value) pair: the text may hold a key name that is not itself redacted."""
  upper, alnum = string.ascii_uppercase + string.digits, string.ascii_letters + string.digits
  kind = rng.randrange(7)
  if kind == 0:
    value = rng.choice(("AKIA", "ASIA")) + _random_string(rng, upper, 16)
    return value, value
  if kind == 1:
    value = rng.choice(("ghp_", "gho_", "ghs_")) + _random_string(rng, alnum, 36)
    return value, value
  if kind == 2:
    value = "xoxb-" + "-".join(_random_string(rng, string.digits, 12) for _ in range(2)) + "-" + (
        _random_string(rng, alnum, 24))
    return value, value
  if kind == 3:
    value = "AIza" + _random_string(rng, alnum + "_-", 35)
    return value, value
  if kind == 4:
    body = "\n".join(_random_string(rng, alnum + "+/", 64) for _ in range(3))
    value = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    return value, value
  if kind == 5:
    value = _random_string(rng, alnum + "/+", 40)
    return f"aws_secret_access_key = {value}", value
  value = _random_string(rng, alnum, rng.choice((20, 32, 40)))
  return f'{rng.choice(("api_key", "API_TOKEN", "client_secret"))}="{value}"', value


def _card(fake, rng: random.Random) -> str:
  # Faker's "jcb16" uses any 35xx prefix, wider than JCB's assigned 3528-3589, so it is left out.
  digits = fake.credit_card_number(
      card_type=rng.choice(("visa16", "visa13", "mastercard", "amex", "discover", "diners"))
  )
  sep = rng.choice(("", " ", "-"))
  if not sep:
    return digits
  # How cards are printed: 4-4-4-4 (16), 4-6-5 (15, Amex), 4-6-4 (14, Diners), 4-4-5 (13).
  sizes = {13: (4, 4, 5), 14: (4, 6, 4), 15: (4, 6, 5)}.get(len(digits), (4, 4, 4, 4, 3))
  groups, i = [], 0
  for size in sizes:
    if i < len(digits):
      groups.append(digits[i:i + size])
      i += size
  return sep.join(groups)


def _public_ipv6(fake) -> str:
  while True:
    value = fake.ipv6()
    if pii.is_public_ip(value):
      return value


def _values(fake, locale: str, pii_type: str, rng: random.Random) -> tuple[str, str] | None:
  """(text to plant, the PII value inside it) for one type, or None if the locale has none."""
  if pii_type == pii.EMAIL:
    value = rng.choice((fake.email, fake.free_email, fake.company_email))()
  elif pii_type == pii.IP_ADDRESS:
    value = fake.ipv4_public() if rng.random() < 0.6 else _public_ipv6(fake)
  elif pii_type == pii.PHONE:
    value = fake.phone_number()
  elif pii_type == pii.CREDIT_CARD:
    value = _card(fake, rng)
  elif pii_type == pii.SSN:
    if locale != "en_US":
      return None
    value = fake.ssn()
  elif pii_type == pii.IBAN:
    value = fake.iban()
    if rng.random() < 0.5:  # The printed form, in groups of four.
      value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
  else:
    return _secret(rng)
  return value, value


def positives(per_locale_and_type: int, seed: int = 0) -> list[Example]:
  """Sentences with one planted value each, over all locales and types."""
  from faker import Faker  # Test/benchmark-only dependency.

  rng = random.Random(seed)
  backgrounds = sentences.sentences(sentences.EVAL_MODULES)
  examples = []
  for locale in LOCALES:
    fake = Faker(locale)
    fake.seed_instance(seed)
    for pii_type in pii.PII_TYPES:
      for _ in range(per_locale_and_type):
        planted = _values(fake, locale, pii_type, rng)
        if planted is None:
          continue
        text, value = planted
        phrase = rng.choice(_CONTEXTS[pii_type]).format(text)
        background = rng.choice(backgrounds)
        text = f"{background} {phrase}" if rng.random() < 0.5 else f"{phrase} {background}"
        examples.append(Example(text, ((pii_type, value),)))
  return examples


def _hard_negative_values(fake, rng: random.Random) -> list[str]:
  bad_luhn = fake.credit_card_number(card_type="visa16")
  bad_luhn = bad_luhn[:-1] + str((int(bad_luhn[-1]) + 1) % 10)
  iban = fake.iban()
  bad_iban = iban[:2] + f"{(int(iban[2:4]) + 1) % 100:02d}" + iban[4:]
  return [
      f"Python {rng.randint(2, 3)}.{rng.randint(0, 13)}.{rng.randint(0, 20)}",
      f"version {rng.randint(1, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}.{rng.randint(0, 9999)}",
      fake.date(pattern=rng.choice(("%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y %H:%M"))),
      fake.iso8601(),
      fake.uuid4(),
      fake.sha1(),
      fake.md5()[:12],
      fake.isbn13(),
      fake.isbn10(),
      f"ISBN {fake.isbn13(separator='')}",
      fake.ipv4_private(),
      rng.choice(("127.0.0.1", "0.0.0.0", "255.255.255.0", "192.0.2.17", "169.254.1.1", "::1",
                  "fe80::1ff:fe23:4567:890a", "2001:db8::8a2e:370:7334")),
      bad_luhn,
      " ".join(bad_luhn[i:i + 4] for i in range(0, 16, 4)),
      f"{rng.choice(('000', '666', '912'))}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
      f"{rng.randint(100, 899)}-00-{rng.randint(1000, 9999)}",
      bad_iban,
      f"0x{rng.getrandbits(32):08x}",
      f"lines {rng.randint(1, 500)}-{rng.randint(501, 999)}",
      f"{rng.randint(1900, 2000)}-{rng.randint(2001, 2030)}",
      "  ".join(str(rng.randint(1000, 99999)) for _ in range(4)),
      f"{rng.randint(1, 9)} {rng.randint(100, 999)} {rng.randint(100, 999)} bytes",
      f"port {rng.randint(1024, 65535)}",
      f"{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}",
      f"x[{rng.randint(1, 9)}::{rng.randint(1, 9)}]",
      f"token = get_token(user_{rng.randint(1, 99)})",
      "api_key = os.environ['API_KEY']",
      f"pid {rng.randint(10000, 4000000)}",
      f"{rng.randint(10**9, 10**10 - 1)} rows",
      f"${rng.randint(1, 999)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
      f"{fake.latitude()}, {fake.longitude()}",
  ]


def hard_negatives(rounds: int, seed: int = 0) -> list[Example]:
  """Sentences that contain PII look-alikes and no PII."""
  from faker import Faker

  rng = random.Random(seed + 1)
  backgrounds = sentences.sentences(sentences.EVAL_MODULES)
  examples = []
  for r in range(rounds):
    fake = Faker(LOCALES[r % len(LOCALES)])
    fake.seed_instance(seed + r)
    for value in _hard_negative_values(fake, rng):
      examples.append(Example(f"{rng.choice(backgrounds)} See {value} above.", ()))
  return examples


@dataclasses.dataclass
class Counts:
  tp: int = 0
  fp: int = 0
  fn: int = 0

  @property
  def precision(self) -> float:
    return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

  @property
  def recall(self) -> float:
    return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def evaluate(examples: list[Example]) -> dict[str, Counts]:
  """Per-type counts; a planted value is found if a hit of its type covers exactly it.

  Any other hit is a false positive (including hits in the real background sentences). The
  ``"ALL"`` entry pools the types.
  """
  counts = {t: Counts() for t in (*pii.PII_TYPES, "ALL")}
  for example in examples:
    matches = pii.find_pii(example.text)
    found = {(m.type, m.value) for m in matches}
    planted = set(example.planted)
    for key in planted:
      hit = key in found
      for name in (key[0], "ALL"):
        counts[name].tp += hit
        counts[name].fn += not hit
    for key in found - planted:
      for name in (key[0], "ALL"):
        counts[name].fp += 1
  return counts


def leaks(examples: list[Example]) -> list[tuple[str, str]]:
  """Planted values still present in the redacted text."""
  return [
      (pii_type, value)
      for example in examples
      for pii_type, value in example.planted
      if value in pii.redact(example.text)[0]
  ]
