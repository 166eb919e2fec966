"""PII stage: finds personal data and secrets, replaces each with a typed placeholder.

Gemma's data card says personal information and other sensitive data are filtered from the
pre-training set; this stage does that with deterministic detectors (one per PII type, each a
candidate regex followed by a validity check) so that every redaction can be explained:

=============  =========================================================================
type           detector
=============  =========================================================================
EMAIL          RFC-5322-ish ``local@domain.tld``; every email is redacted, example.com too
IP_ADDRESS     IPv4/IPv6 parsed by ``ipaddress``; only globally routable addresses count
               (private, loopback, link-local, documentation, reserved ranges are not PII)
PHONE          digit runs with phone punctuation, validated by ``phonenumbers`` for
               international (``+``/``00``) and several national (US, GB, DE, FR, ES, IT)
               formats; dates, versions, ISBNs and ranges are ruled out first
CREDIT_CARD    13-19 digits (spaces/dashes), known IIN prefix and length, Luhn checksum
SSN            US ``AAA-GG-SSSS`` with the SSA validity rules; 9 bare digits only next to
               an SSN keyword
IBAN           country code + check digits + BBAN, country length table, ISO 7064 mod-97
SECRET         vendor key formats from the detect-secrets plugins (AWS, GitHub, GitLab, Slack
               tokens and webhooks, Stripe, SendGrid, Twilio, JWT, npm, PyPI, OpenAI,
               Discord, Telegram, Mailchimp, Square, Azure storage, Artifactory,
               ``://user:password@`` URLs, private-key blocks: PEM, OpenSSH, PGP, SSH2, PuTTY);
               own patterns for GitHub fine-grained and Google API tokens, any PEM label, AWS
               secret keys in context, high-entropy ``api_key=``/``token:`` values (only the
               value is redacted, the key name stays)
=============  =========================================================================

Tag-then-filter: every document gets ``doc["pii"] = {type: count}`` and its text redacted;
documents with more hits than :class:`PiiConfig` allows are dropped as ``too_much_pii`` (their
rejects record holds the redacted text, so the rejects file leaks nothing either).

Run: ``python -m pipelines.pii --input=<quality dir> --output_dir=<dir> [--max_hits=20]``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import inspect
import ipaddress
import math
import pkgutil
import re
import re._parser as _sre
import sys
from typing import Callable, Iterator, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
import detect_secrets.plugins
from detect_secrets.plugins.base import RegexBasedDetector
import phonenumbers

from pipelines import common

STAGE = "pii"

EMAIL = "EMAIL"
IP_ADDRESS = "IP_ADDRESS"
PHONE = "PHONE"
CREDIT_CARD = "CREDIT_CARD"
SSN = "SSN"
IBAN = "IBAN"
SECRET = "SECRET"


class Match(NamedTuple):
  """One PII hit: ``text[start:end] == value``."""

  type: str
  start: int
  end: int
  value: str


def placeholder(pii_type: str) -> str:
  return f"<{pii_type}>"


def _before(text: str, start: int, width: int = 30) -> str:
  return text[max(0, start - width):start]


# ----------------------------------------------------------------------------- emails

_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])"
    r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![\w-])"
)


def _find_emails(text: str) -> Iterator[Match]:
  if "@" not in text:
    return  # Every match holds an "@"; most documents have none, and the scan is not free.
  for m in _EMAIL_RE.finditer(text):
    yield Match(EMAIL, m.start(), m.end(), m.group())


# ----------------------------------------------------------------------------- IP addresses

_IPV4_RE = re.compile(r"(?<![\w.=-])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# Hex groups and colons (with an optional dotted IPv4 tail), at least two colons.
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)"
    r"[0-9A-Fa-f:]{2,39}(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_VERSION_CONTEXT_RE = re.compile(
    r"(?i)(?:version|release|v\.?|section|secci[óo]n|abschnitt|sezione|chapitre|§)\s*$"
)
# Words near a dotted quad that say it is an address (then even 10.1.2.3-like small numbers are).
_IP_CONTEXT_RE = re.compile(
    r"(?i)\b(?:ip|ipv4|address|adres|adresse|dirección|indirizzo|host|server|ping|inet|gateway|"
    r"dns|nameserver|route|subnet|netmask)\b[\s:=]*$"
)
# Dotted numbers with every part at most this are read as section/version numbers (5.10.2.1,
# "Paragraaf 14.3.4.1") unless an address word precedes them: such public addresses are rare.
_SECTION_PART_MAX = 31


def is_public_ip(value: str) -> bool:
  """True for a globally routable address; private, loopback, documentation etc. are not PII."""
  try:
    address = ipaddress.ip_address(value)
  except ValueError:
    return False
  return address.is_global and not address.is_multicast


def _find_ips(text: str) -> Iterator[Match]:
  for m in _IPV4_RE.finditer(text):
    parts = m.group().split(".")
    if all(len(octet) == 1 for octet in parts):
      continue  # ``6.2.4.3``: section and version numbers (and public resolvers like 1.1.1.1).
    if all(int(p) <= _SECTION_PART_MAX for p in parts) and not _IP_CONTEXT_RE.search(
        _before(text, m.start(), 20)):
      continue  # ``14.3.4.1``: a section number, unless the text says it is an address.
    if is_public_ip(m.group()) and not _VERSION_CONTEXT_RE.search(_before(text, m.start(), 12)):
      yield Match(IP_ADDRESS, m.start(), m.end(), m.group())
  for m in _IPV6_RE.finditer(text):
    value = m.group()
    # Three or more groups rule out slices like ``x[1::2]`` and clock times.
    if len([g for g in re.split(r"[:]", value) if g]) >= 3 and is_public_ip(value):
      yield Match(IP_ADDRESS, m.start(), m.end(), value)


# ----------------------------------------------------------------------------- phone numbers

PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT")
_PHONE_RE = re.compile(
    r"(?<![\w.,/+-])"
    r"(?:\+|00)?\(?\d[\d ().\-/]{5,22}\d"
    r"(?:\s?(?:x|ext\.?|extension)\s?\d{1,5})?"
    r"(?![\w]|[.,/:-]\w)"
)
_PHONE_CONTEXT_RE = re.compile(
    r"(?i)\b(?:tel|phone|telephone|call|reach|mobile|cell|fax|whatsapp|contact|telefon|handy|"
    r"t[ée]l[ée]phone|portable|tel[ée]fono|m[óo]vil|cellulare|rufnummer|telefonnummer)\b"
)
_NOT_PHONE_CONTEXT_RE = re.compile(
    r"(?i)(?:isbn|issn|doi|version|release|python|v\.?|id|pid|port|#|no\.|n°|serial|order|"
    r"invoice|page|pp\.|lines?|build|root|total|"
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?)[\s:=]*$"
)
# ``2008-05-09``, ``05/10/2004``, ``09.05.2008`` anywhere in the candidate (``64 2008-05-09``).
_DATE_IN_RE = re.compile(r"(?<!\d)(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})(?!\d)")
_NANP_RE = re.compile(r"^(?:\+?1[ .-]?|001[ .-]?)?\(?[2-9]\d\d\)?[ .-]?[2-9]\d\d[ .-]\d{4}$")
_EXTENSION_RE = re.compile(r"\s?(?:x|ext\.?|extension)\s?\d{1,5}$")


# US states and territories: ``MA 02110-1301`` is a ZIP+4 code, not a phone number.
_US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "
    "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MP PR VI".split())
_ZIP4_RE = re.compile(r"^\d{5}-\d{4}$")
_ZIP_CONTEXT_RE = re.compile(r"(?:\b([A-Z]{2})|(?i:\bzip(?:\s*code)?|\bpostal\s*code))[\s,:.]*$")


def _is_zip4(candidate: str, before: str) -> bool:
  """``02110-1301`` after a state code or "ZIP": a US postal code."""
  if not _ZIP4_RE.match(candidate):
    return False
  context = _ZIP_CONTEXT_RE.search(before)
  return bool(context) and (context.group(1) is None or context.group(1) in _US_STATES)


def _phone_shape_ok(candidate: str) -> bool:
  """Rules out digit runs that are shaped like dates, versions, ranges or plain numbers."""
  core = _EXTENSION_RE.sub("", candidate)
  if _DATE_IN_RE.search(core) or _IPV4_RE.fullmatch(core) or re.search(r"[ .\-/()]{2,}", core.replace(") ", ")").replace(" (", "(")):
    return False
  if re.match(r"^\d{3}-\d{2}-\d{4}$", core):
    return False  # SSN-shaped (valid ones are SSNs; invalid ones are not phones either).
  groups = [g for g in re.split(r"[ .\-/()]+", core.lstrip("+")) if g]
  if core.count("(") != core.count(")"):
    return False
  if len(groups) == 2 and not (core.startswith(("+", "(", "0"))):
    return False  # ``1990-2000``, ``12345 67890``: ranges and pairs of numbers.
  if len(groups) > 2 and len(groups[-1]) == 1:
    return False  # ``0-328-71158-6``: ISBNs and other IDs end in a single check digit.
  if re.match(r"^\d{1,2}(?:[ ,.]\d{3})+$", core):
    return False  # ``4 705 204``: a number with thousands separators.
  if not core.startswith(("+", "00")) and len(re.sub(r"\D", "", core)) > 12:
    return False  # Longer national digit runs are card or account numbers, not phones.
  if "." in core and not re.match(r"^(?:\+?\d{1,3}\.)?\d{2,4}(?:\.\d{2,4}){2,4}$", core):
    return False  # Dotted runs are phone numbers only in the ``281.256.5938`` shape.
  return True


def _valid_phone(candidate: str, has_context: bool) -> bool:
  core = _EXTENSION_RE.sub("", candidate)
  digits = re.sub(r"\D", "", core)
  if not 7 <= len(digits) <= 15:
    return False
  international = core.startswith("+") or (core.startswith("00") and not core.startswith("000"))
  bare = core.isdigit()
  if international:
    number = "+" + core[2:] if core.startswith("00") else core
    try:
      parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
      return False
    return phonenumbers.is_valid_number(parsed) or (
        phonenumbers.is_possible_number(parsed) and (has_context or not bare)
    )
  if bare and not has_context and not (digits.startswith("0") and len(digits) >= 10):
    return False  # Unformatted digit runs are IDs and counts unless the text says "phone".
  if not bare and _NANP_RE.match(core):
    return True  # NANP structure: area code and exchange start with 2-9.
  for region in PHONE_REGIONS:
    try:
      parsed = phonenumbers.parse(core, region)
    except phonenumbers.NumberParseException:
      continue
    if phonenumbers.is_valid_number(parsed):
      return True
    if has_context and phonenumbers.is_possible_number(parsed):
      return True
  return False


def _find_phones(text: str) -> Iterator[Match]:
  for m in _PHONE_RE.finditer(text):
    value = m.group()
    before = _before(text, m.start(), 40)
    if _NOT_PHONE_CONTEXT_RE.search(before[-14:]) or not _phone_shape_ok(value):
      continue
    if _is_zip4(value, before):
      continue
    if _valid_phone(value, has_context=bool(_PHONE_CONTEXT_RE.search(before))):
      yield Match(PHONE, m.start(), m.end(), value)


# ----------------------------------------------------------------------------- credit cards

# (brand, IIN prefix ranges (inclusive, same number of digits per range), allowed lengths).
CARD_BRANDS: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]], ...] = (
    ("visa", ((4, 4),), (13, 16, 19)),
    ("mastercard", ((51, 55), (2221, 2720)), (16,)),
    ("amex", ((34, 34), (37, 37)), (15,)),
    ("discover", ((6011, 6011), (644, 649), (65, 65)), (16, 17, 18, 19)),
    ("diners", ((300, 305), (36, 36), (38, 39)), (14, 15, 16, 17, 18, 19)),
    ("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    ("jcb15", ((1800, 1800), (2131, 2131)), (15,)),
    ("unionpay", ((62, 62),), (16, 17, 18, 19)),
    ("maestro", ((50, 50), (56, 58), (6304, 6304), (6759, 6759), (6761, 6763)), tuple(range(13, 20))),
)
_CARD_RE = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w]|[ .-]\d)")


def luhn_valid(digits: str) -> bool:
  """The Luhn (mod 10) checksum of a digit string."""
  if not digits.isdigit():
    return False
  total = 0
  for i, ch in enumerate(reversed(digits)):
    d = int(ch)
    if i % 2 == 1:
      d = d * 2 - 9 if d > 4 else d * 2
    total += d
  return total % 10 == 0


def card_brand(digits: str) -> str | None:
  """The brand whose IIN prefix and length fit ``digits``, or None."""
  for brand, ranges, lengths in CARD_BRANDS:
    if len(digits) not in lengths:
      continue
    for low, high in ranges:
      if low <= int(digits[:len(str(low))]) <= high:
        return brand
  return None


def _find_cards(text: str) -> Iterator[Match]:
  for m in _CARD_RE.finditer(text):
    value = m.group()
    separators = set(re.findall(r"[ -]", value))
    if len(separators) > 1:
      continue
    if separators and any(not 3 <= len(g) <= 6 for g in re.split(r"[ -]", value)):
      continue
    digits = re.sub(r"\D", "", value)
    if card_brand(digits) and luhn_valid(digits):
      yield Match(CREDIT_CARD, m.start(), m.end(), value)


# ----------------------------------------------------------------------------- US SSNs

_SSN_RE = re.compile(r"(?<![\w.-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w]|[.-]\d)")
_SSN_BARE_RE = re.compile(r"(?<![\w.-])(\d{3})(\d{2})(\d{4})(?![\w]|[.-]\d)")
_SSN_CONTEXT_RE = re.compile(r"(?i)\b(?:ssn|ss#|social security(?: number| no\.?| #)?)\b")


def ssn_valid(area: str, group: str, serial: str) -> bool:
  """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
  return (
      area != "000" and area != "666" and not area.startswith("9")
      and group != "00" and serial != "0000"
  )


def _find_ssns(text: str) -> Iterator[Match]:
  for m in _SSN_RE.finditer(text):
    if m.group(2) == " " and not _SSN_CONTEXT_RE.search(_before(text, m.start(), 40)):
      continue  # ``123 45 6789`` is too common in tables to count without a keyword.
    if ssn_valid(m.group(1), m.group(3), m.group(4)) and not _NOT_PHONE_CONTEXT_RE.search(
        _before(text, m.start(), 14)
    ):
      yield Match(SSN, m.start(), m.end(), m.group())
  for m in _SSN_BARE_RE.finditer(text):
    if ssn_valid(*m.groups()) and _SSN_CONTEXT_RE.search(_before(text, m.start(), 40)):
      yield Match(SSN, m.start(), m.end(), m.group())


# ----------------------------------------------------------------------------- IBANs

# ISO 13616 registry: country code -> IBAN length.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_RE = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![\w])")


def iban_valid(iban: str) -> bool:
  """Country length from the registry and the ISO 7064 mod-97 check (remainder 1)."""
  iban = iban.replace(" ", "").upper()
  if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban[2:4].isdigit():
    return False
  rearranged = iban[4:] + iban[:4]
  return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _find_ibans(text: str) -> Iterator[Match]:
  for m in _IBAN_RE.finditer(text):
    length = IBAN_LENGTHS.get(m.group()[:2])
    if length is None:
      continue
    # The group pattern may run into a following token; cut the span at the country's length.
    end, seen = m.start(), 0
    while end < m.end() and seen < length:
      seen += text[end] != " "
      end += 1
    if seen == length and (end == m.end() or text[end] == " ") and iban_valid(text[m.start():end]):
      yield Match(IBAN, m.start(), end, text[m.start():end])


# ----------------------------------------------------------------------------- secrets

# Vendor key formats come from the detect-secrets plugins (Yelp; pinned): its regex-based plugins
# but these. IPPublicDetector: public IPs are IP_ADDRESS, with a stricter check. The IBM Cloud IAM,
# IBM COS HMAC, Cloudant and SoftLayer plugins match a key name and then a value
# (IbmCloudIamDetector's vendor prefix is optional: any ``key: <44 characters>``), which is the
# key-name rule below with no randomness check; gated only by a key word (``key``, ``pass``...)
# they also took 2/3 of the SECRET detector's time on the sample (and a Cloudant URL is a
# BasicAuthDetector hit anyway).
# The keyword and high-entropy-string plugins are not regex-based and not used either: on prose
# they flag every long word.
_NOT_SECRET_PLUGINS = frozenset({
    "IPPublicDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "CloudantDetector",
    "SoftlayerDetector",
})
# Plugins whose patterns capture the secret in group 1 next to a key name or inside a URL
# (``aws…key "…"``, ``://user:<password>@``, ``//registry/:_authToken=<token>``): the value is
# redacted, the context stays. In GitHubTokenDetector and GitLabTokenDetector a group holds the
# vendor prefix (``(ghp|gho|…)_``), so there, as in every group-less pattern, the whole match is
# the secret. tests/test_pii.py checks that every pattern with a group is in one of the two sets.
_VALUE_GROUP_PLUGINS = frozenset({"AWSKeyDetector", "BasicAuthDetector", "NpmDetector"})
_PREFIX_GROUP_PLUGINS = frozenset({"GitHubTokenDetector", "GitLabTokenDetector"})
# PrivateKeyDetector's patterns match a key's header (``BEGIN RSA PRIVATE KEY``); the secret is
# the block that the header opens (:func:`_key_block`).
_KEY_HEADER_PLUGIN = "PrivateKeyDetector"


class SecretPattern(NamedTuple):
  """One detect-secrets pattern, with how its hits become spans and the pre-check that gates it."""

  plugin: str  # Class name, e.g. "StripeDetector".
  regex: re.Pattern
  value_group: int  # 1: the secret is group 1; 0: the whole match (token or key header).
  literals: tuple[str, ...]  # Every match holds one of these; () when none could be derived.
  folded: bool  # The literals are casefolded (an IGNORECASE pattern): test them on folded text.


def _leading_literal(items) -> str:
  out = []
  for op, av in items:
    if op is not _sre.LITERAL:
      break
    out.append(chr(av))
  return "".join(out)


def _required_literals(regex: re.Pattern) -> tuple[str, ...]:
  """Literals one of which every match of ``regex`` contains, read off its parse tree: the
  longest run of literal characters outside repeats, or a run followed by an alternation
  (``(?:AKIA|ASIA)``, ``gl(?:pat|dt)``) as one literal per branch; () when there is none of at
  least two characters (the pattern is then always run), and () when the parse fails (the parser
  is CPython's private ``re._parser``; tests/test_pii.py pins which patterns get a gate)."""
  best: tuple[str, ...] = ()

  def consider(candidate: tuple[str, ...]) -> None:
    nonlocal best
    if all(candidate) and (not best or min(map(len, candidate)) > min(map(len, best))):
      best = candidate

  def walk(items, run: str) -> None:
    for op, av in items:
      if op is _sre.LITERAL:
        run += chr(av)
        continue
      if op is _sre.BRANCH:
        consider(tuple(run + _leading_literal(branch) for branch in av[1]))
      elif op is _sre.SUBPATTERN and not av[1] and not av[2]:  # A group with no flags of its own.
        walk(av[3], run)
      consider((run,))
      run = ""
    consider((run,))

  try:  # re._parser is private: if it changes, gate nothing (always run: correct, only slower).
    walk(_sre.parse(regex.pattern, regex.flags), "")
  except Exception:  # noqa: BLE001 - any failure of the private parser means "no gate".
    return ()
  if regex.flags & re.IGNORECASE:
    best = tuple(literal.casefold() for literal in best)
  return best if best and min(map(len, best)) >= 2 else ()  # One character gates nothing.


def _fold(text: str) -> str:
  # casefold() maps every character that (?i) matches to an ASCII letter onto that letter (the
  # Kelvin sign and long s included), except the dotless i, which (?i) matches to "i".
  return text.casefold().replace("\u0131", "i")


def _vendor_patterns() -> tuple[SecretPattern, ...]:
  plugins = []
  for module in pkgutil.iter_modules(detect_secrets.plugins.__path__):
    for _, cls in inspect.getmembers(importlib.import_module(f"detect_secrets.plugins.{module.name}"),
                                     inspect.isclass):
      if (issubclass(cls, RegexBasedDetector) and cls is not RegexBasedDetector
          and cls.__module__ == f"detect_secrets.plugins.{module.name}"
          and cls.__name__ not in _NOT_SECRET_PLUGINS):
        plugins.append(cls)
  out = []
  for cls in sorted(plugins, key=lambda c: c.__name__):
    for regex in cls().denylist:
      value_group = 1 if cls.__name__ in _VALUE_GROUP_PLUGINS and regex.groups else 0
      out.append(SecretPattern(cls.__name__, regex, value_group, _required_literals(regex),
                               bool(regex.flags & re.IGNORECASE)))
  return tuple(out)


_VENDOR_PATTERNS = _vendor_patterns()

# The project's own patterns, for formats the library has no plugin for (case-sensitive; each with
# the literals one of which every match contains).
_SECRET_RES = (
    (("github_pat_",),
     re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,255}(?![A-Za-z0-9_])")),
    (("AIza",), re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])")),
    # Any PEM label (``ENCRYPTED PRIVATE KEY`` has no detect-secrets header pattern).
    (("PRIVATE KEY-----",), re.compile(
        r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[\s\S]*?-----END \1PRIVATE KEY-----"
    )),
)
# Characters a token can go on with after a library pattern stops (JWT's lazy signature, GitHub's
# fixed 36, Stripe's fixed 24: longer keys exist), and context characters some patterns include
# (ArtifactoryDetector's ``(?:\s|=|:|"|^)…(?:\s|"|$)``).
_TOKEN_TAIL_RE = re.compile(r"[A-Za-z0-9_\-+/=.]*")
# Fixed-length tokens are not extended over a ``/``: an AWS key id is exactly 20 characters and
# the ``/`` would take a SigV4 ``Credential=AKIA…/20130524/us-east-1/s3/aws4_request`` scope with
# it; a Telegram token is followed by the Bot API method (``…/sendMessage``).
_FIXED_LENGTH_PLUGINS = frozenset({"AWSKeyDetector", "TelegramBotTokenDetector"})
_FIXED_TOKEN_TAIL_RE = re.compile(r"[A-Za-z0-9_\-+=.]*")
# TelegramBotTokenDetector's ``\d{8,10}:…``: in the Bot API's URL form the token follows ``bot``
# (``https://api.telegram.org/bot123456789:AAH…/sendMessage``), so a start right after ``bot`` is
# not a start inside a longer word.
_TOKEN_PREFIXES = {"TelegramBotTokenDetector": "bot"}
# ArtifactoryDetector's ``AKC…``/``AP[0-9A-F]…`` patterns also match words (``APEXLegends``,
# ``APACHE2License``); Artifactory API keys and encrypted passwords are long random strings, so
# its spans must be at least this long and pass _looks_random.
_ARTIFACTORY_MIN_LEN = 20
_CONTEXT_CHARS = " \t\r\n\"'=:."
# A key's body after its header line, so that a key with no END line does not take the prose after
# it: ``Name: value`` header lines (PGP's ``Version: GnuPG``, PuTTY's ``Encryption: none``) only
# before the first base64 line, then one optional blank line (PGP armour's), then base64 lines of
# 16+ characters and PuTTY's ``Private-Lines: 14``/``Private-MAC: …`` lines. A shorter line (the
# last of a base64 run) is taken only where a body goes on after it (an END line, PuTTY's
# ``Private-…`` line, PGP's ``=Xb4Q`` checksum) or, as the body's very last line, when it is
# padded (``…AB==``) or is the checksum. The body ends at the first blank or other line: prose
# words are not base64 lines of 16+ characters and end in no ``=``.
_KEY_LINE = r"\r?\n[ \t]*(?:{})[ \t\r]*(?=\n|\Z)"
_KEY_BODY_GOES_ON = (r"(?=\r?\n[ \t]*(?:-*[ ]?END |Private-(?:Lines|MAC|Hash): "
                     r"|=[A-Za-z0-9+/]{4}[ \t\r]*(?:\n|\Z)))")
_KEY_BODY_RE = re.compile(
    "(?:" + _KEY_LINE.format(r"[A-Za-z][A-Za-z0-9-]*: [^\n]*") + ")*"
    r"(?:\r?\n[ \t\r]*(?=\n))?"
    "(?:" + _KEY_LINE.format(r"[A-Za-z0-9+/=]{16,}|(?:Public|Private)-Lines: \d+"
                             r"|Private-(?:MAC|Hash): [0-9A-Fa-f]+")
    + "|" + _KEY_LINE.format(r"[A-Za-z0-9+/=]{1,15}") + _KEY_BODY_GOES_ON + ")*"
    "(?:" + _KEY_LINE.format(r"[A-Za-z0-9+/]*={1,2}|=[A-Za-z0-9+/]{4}") + ")?"
)
# Placeholders that docs put in ``scheme://user:<password>@host``: a URL password is redacted
# unless it is one of these (no randomness test: real passwords are often words with digits).
_URL_PASSWORD_PLACEHOLDER_RE = re.compile(
    r"(?i)(?:password|passwd|pass|pwd|pw|secret|changeme|foo|bar|baz|x+|\*+|<[^>]*>|\$\{[^}]*\}"
    r"|%s|\{[^}]*\})"
)
# Values after a key name: group 1 is the value that gets redacted.
_AWS_SECRET_RE = re.compile(
    r"(?i)aws.{0,20}(?:secret|private).{0,20}?[\s:=\"'>]+([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_ASSIGNMENT_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9])[A-Za-z0-9_.-]*?(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|access[_-]?token|"
    r"auth[_-]?token|bearer|token|password|passwd|pwd)[A-Za-z0-9_]*[\"']?\s*[:=]\s*[\"']?"
    r"([A-Za-z0-9_\-+/=.~]{16,})"
)
# Every _ASSIGNMENT_RE match holds one of these key words (``api_key``: key, ``password``: passw,
# ``client-secret``: secret...) followed by ``[A-Za-z0-9_]*``, an optional quote, spaces and
# ``:``/``=``. Its leading lazy ``[A-Za-z0-9_.-]*?`` is tried at every word start, which makes it
# the slowest PII pattern; these two cheaper checks skip it on texts where it cannot match.
_ASSIGNMENT_KEYWORDS = ("key", "secret", "token", "bearer", "passw", "pwd")
_ASSIGNMENT_GATE_RE = re.compile(
    r"(?i)(?:key|secret|token|bearer|passw|pwd)[A-Za-z0-9_]*[\"']?\s*[:=]"
)


def shannon_entropy(value: str) -> float:
  """Bits per character of ``value``'s own character distribution."""
  counts = collections.Counter(value)
  return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def _looks_random(value: str) -> bool:
  """A key, not ``os.environ.get``, ``your_api_key_here`` or a camelCase identifier.

  Keys mix letters and digits with high entropy; a letters-only key must be long, very high in
  entropy and about as much upper as lower case (identifiers are mostly lower case).
  """
  letters = [ch for ch in value if ch.isalpha()]
  if not letters:
    return False
  if any(ch.isdigit() for ch in value):
    return shannon_entropy(value) >= 3.5
  upper = sum(ch.isupper() for ch in letters) / len(letters)
  return len(value) >= 24 and shannon_entropy(value) >= 4.0 and 0.25 <= upper <= 0.75


def _without_context(text: str, start: int, end: int) -> tuple[int, int]:
  """``[start, end)`` with the context characters a pattern took at either end left out."""
  while start < end and text[start] in _CONTEXT_CHARS:
    start += 1
  while end > start and text[end - 1] in _CONTEXT_CHARS:
    end -= 1
  return start, end


def _token_span(plugin: str, text: str, m: re.Match) -> tuple[int, int] | None:
  """A whole-match token's span: context characters off, the rest of the token on (not over a
  ``/`` for fixed-length ones); None when it starts inside a longer word (``xAKIA…``: the
  library's patterns have no left boundary) other than the plugin's known prefix (``bot`` for
  Telegram)."""
  start, end = _without_context(text, *m.span())
  if start == end:
    return None
  prefix = _TOKEN_PREFIXES.get(plugin)
  if start and text[start - 1].isalnum() and not (prefix and text.endswith(prefix, 0, start)):
    return None
  tail = _FIXED_TOKEN_TAIL_RE if plugin in _FIXED_LENGTH_PLUGINS else _TOKEN_TAIL_RE
  end = tail.match(text, end).end()
  while text[end - 1] == ".":  # A sentence's full stop, not the token's.
    end -= 1
  return start, end


def _key_block(text: str, m: re.Match) -> tuple[int, int] | None:
  """The span of the key whose header ``m`` matched: from the header's dashes through its
  ``END …`` line, or through its body when the END line is missing (a key cut off in a post);
  None for a header with no key body after it (prose naming the format)."""
  start = m.start()
  if text[max(0, start - 2):start] == "- ":  # SSH2's "---- BEGIN".
    start -= 1
  while start and text[start - 1] == "-":
    start -= 1
  line_end = text.find("\n", m.end())
  if line_end < 0:
    return None
  body = _KEY_BODY_RE.match(text, line_end)
  if not body or not re.search(r"[A-Za-z0-9+/=]{16,}", body.group()):
    return None
  end = body.end()
  label = m.group().removeprefix("BEGIN ")
  if label != m.group():
    closing = re.compile(r"\s*-*[ ]?END " + re.escape(label) + r"[ -]*").match(text, end)
    end = closing.end() if closing else end
  while text[end - 1].isspace():
    end -= 1
  return start, end


def _vendor_span(pattern: SecretPattern, text: str, m: re.Match) -> tuple[int, int] | None:
  if pattern.plugin == _KEY_HEADER_PLUGIN:
    return _key_block(text, m)
  if pattern.value_group:
    start, end = _without_context(text, *m.span(pattern.value_group))
    # A value ends at its first whitespace (NpmDetector's ``npm_.+`` takes a trailing comment).
    space = re.search(r"\s", text[start:end])
    end = start + space.start() if space else end
    if start == end:
      return None
    value = text[start:end]
    if pattern.plugin == "BasicAuthDetector":
      # Docs write ``http://user:password@host``; a real password need not look random.
      return None if _URL_PASSWORD_PLACEHOLDER_RE.fullmatch(value) else (start, end)
    return (start, end) if _looks_random(value) else None
  span = _token_span(pattern.plugin, text, m)
  if span and pattern.plugin == "ArtifactoryDetector":
    token = text[span[0]:span[1]]
    if len(token) < _ARTIFACTORY_MIN_LEN or not _looks_random(token):
      return None
  return span


def _vendor_matches(pattern: SecretPattern, text: str) -> Iterator[Match]:
  """``pattern``'s hits in ``text``, ungated."""
  for m in pattern.regex.finditer(text):
    span = _vendor_span(pattern, text, m)
    if span:
      yield Match(SECRET, span[0], span[1], text[span[0]:span[1]])


def _find_secrets(text: str) -> Iterator[Match]:
  folded = _fold(text)
  for pattern in _VENDOR_PATTERNS:
    # A substring test per pattern is far cheaper than its scan; most texts hold no literal.
    haystack = folded if pattern.folded else text
    if not pattern.literals or any(literal in haystack for literal in pattern.literals):
      yield from _vendor_matches(pattern, text)
  for literals, regex in _SECRET_RES:
    if any(literal in text for literal in literals):
      for m in regex.finditer(text):
        yield Match(SECRET, m.start(), m.end(), m.group())
  # Key words are found in the casefolded text (see _fold).
  if "aws" in folded:
    for m in _AWS_SECRET_RE.finditer(text):
      yield Match(SECRET, m.start(1), m.end(1), m.group(1))
  if any(word in folded for word in _ASSIGNMENT_KEYWORDS) and _ASSIGNMENT_GATE_RE.search(text):
    for m in _ASSIGNMENT_RE.finditer(text):
      if _looks_random(m.group(1)):
        yield Match(SECRET, m.start(1), m.end(1), m.group(1))


# ----------------------------------------------------------------------------- all together

# In priority order: where two detectors claim overlapping text, the earlier one wins (a key
# that contains digits is a SECRET, not a phone number; an SSN is not a phone number).
DETECTORS: tuple[tuple[str, Callable[[str], Iterator[Match]]], ...] = (
    (SECRET, _find_secrets),
    (EMAIL, _find_emails),
    (IBAN, _find_ibans),
    (CREDIT_CARD, _find_cards),
    (SSN, _find_ssns),
    (IP_ADDRESS, _find_ips),
    (PHONE, _find_phones),
)
PII_TYPES = tuple(name for name, _ in DETECTORS)


def find_pii(text: str, types: Sequence[str] = PII_TYPES) -> list[Match]:
  """All non-overlapping PII hits in ``text``, sorted by position."""
  taken: list[Match] = []
  for name, detector in DETECTORS:
    if name not in types:
      continue
    for match in sorted(detector(text), key=lambda m: (m.start, -m.end)):
      if all(match.end <= t.start or match.start >= t.end for t in taken):
        taken.append(match)
  return sorted(taken, key=lambda m: m.start)


def redact(text: str) -> tuple[str, dict[str, int]]:
  """Replaces every hit with its placeholder; returns the new text and ``{type: count}``."""
  matches = find_pii(text)
  pieces, position = [], 0
  for match in matches:
    pieces.append(text[position:match.start])
    pieces.append(placeholder(match.type))
    position = match.end
  pieces.append(text[position:])
  counts = collections.Counter(m.type for m in matches)
  return "".join(pieces), dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- Beam stage


@dataclasses.dataclass(frozen=True)
class PiiConfig:
  """When a document has so much PII that redacting it leaves a form, not prose.

  A page with one contact email is kept (redacted); a directory listing of addresses is dropped.
  The cap is relative to length: more than one hit per ``min_words_per_hit`` words, from
  ``density_min_hits`` hits on (so one email in a three-line page does not count as "one hit per
  3 words"). A long archive page with one mailing-list address every ~400 words is prose and is
  kept. ``max_hits`` adds an absolute cap for those who want one; 0 (the default) means none.
  """

  max_hits: int = 0
  min_words_per_hit: float = 50.0
  density_min_hits: int = 3

  def __post_init__(self):
    if self.max_hits < 0 or self.min_words_per_hit < 0 or self.density_min_hits < 1:
      raise ValueError(f"Invalid PiiConfig: {self}")

  def too_much(self, hits: int, words: int) -> bool:
    if self.max_hits and hits > self.max_hits:
      return True
    return hits >= self.density_min_hits and hits * self.min_words_per_hit > words


class RedactPii(beam.DoFn):
  """Redacts PII in ``doc["text"]``, records ``doc["pii"]``, drops PII-heavy documents."""

  def __init__(self, config: PiiConfig):
    self._config = config

  @common.per_element(STAGE, "pii_error")
  def process(self, doc: common.Doc):
    text, counts = redact(doc["text"])
    for pii_type, n in counts.items():
      Metrics.counter(STAGE, f"redacted.{pii_type}").inc(n)
    doc = dict(doc, text=text, pii=counts)
    hits, words = sum(counts.values()), len(text.split())
    if self._config.too_much(hits, words):
      yield common.reject(STAGE, "too_much_pii", doc, hits=hits, words=words)
    else:
      yield common.keep(STAGE, doc)


def _add_args(parser: argparse.ArgumentParser) -> None:
  defaults = PiiConfig()
  parser.add_argument("--max_hits", type=int, default=defaults.max_hits,
                      help="Drop documents with more PII hits than this (0: no absolute cap, "
                      "only the relative one below).")
  parser.add_argument("--min_words_per_hit", type=float, default=defaults.min_words_per_hit,
                      help="Drop documents with more than one hit per this many words...")
  parser.add_argument("--density_min_hits", type=int, default=defaults.density_min_hits,
                      help="...once they have at least this many hits.")


def build(args: argparse.Namespace):
  """The stage's transform (docs -> kept + rejects) from its flags; the fused filter job uses it too."""
  return transform(steps(args))


def transform(dofns: tuple[beam.DoFn, ...]):
  """The transform that applies :func:`steps`' DoFn as a ParDo (the default layout)."""
  return common.dofn_transform("RedactPii", *dofns)


def steps(args: argparse.Namespace) -> tuple[beam.DoFn, ...]:
  """The stage's DoFns, for ``build`` and for the per-input layout (pipelines/shardwise.py)."""
  return (RedactPii(PiiConfig(args.max_hits, args.min_words_per_hit, args.density_min_hits)),)


add_args = _add_args


def main(argv: Sequence[str] | None = None) -> dict:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  dofns = steps(args)  # Built once: both layouts get these DoFns.
  return common.run_doc_stage(STAGE, args, options, transform(dofns), dofns)


if __name__ == "__main__":
  import logging

  logging.getLogger().setLevel(logging.INFO)
  print(main(sys.argv[1:]))
