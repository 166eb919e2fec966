"""Secrets in formats the SECRET detector was not written from: an independent recall check.

`pii_data._secret` builds its positives from the same prefixes `pipelines.pii` looks for (AKIA,
ghp_, xoxb-, AIza, PEM RSA keys, key-name assignments), so its recall says nothing about keys of
other vendors. The formats below come from each vendor's public documentation of its key format
(Stripe, GitLab, npm, SendGrid, Twilio, Slack webhooks, JWTs, OpenSSH/EC/PGP key blocks,
credentials in URLs), each in the kind of place it leaks (a .env line, YAML, JSON, a shell
export, an HTTP header, prose). Bodies are random in the documented alphabet and length, seeded.
"""

from __future__ import annotations

import base64
import random
import string
from typing import Callable

from pipelines import pii

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def _body(rng: random.Random, alphabet: str, n: int) -> str:
  return "".join(rng.choice(alphabet) for _ in range(n))


def _jwt(rng: random.Random) -> str:
  def part(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
  header = part(b'{"alg":"HS256","typ":"JWT"}')
  claims = part(f'{{"sub":"{rng.randrange(10**9)}","iat":{1700000000 + rng.randrange(10**7)}}}'.encode())
  return f"{header}.{claims}.{_body(rng, B64URL, 43)}"


def _pem(rng: random.Random, label: str) -> str:
  lines = "\n".join(_body(rng, ALNUM + "+/", 70) for _ in range(3))
  return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


# format name -> value maker (vendor-documented shape, random body).
FORMATS: dict[str, Callable[[random.Random], str]] = {
    "stripe_secret_key": lambda rng: "sk_live_" + _body(rng, ALNUM, 24),
    "stripe_restricted_key": lambda rng: "rk_live_" + _body(rng, ALNUM, 24),
    "gitlab_pat": lambda rng: "glpat-" + _body(rng, B64URL, 20),
    "npm_token": lambda rng: "npm_" + _body(rng, ALNUM, 36),
    "sendgrid_key": lambda rng: f"SG.{_body(rng, B64URL, 22)}.{_body(rng, B64URL, 43)}",
    "twilio_api_key": lambda rng: "SK" + _body(rng, "0123456789abcdef", 32),
    "slack_webhook": lambda rng: ("https://hooks.slack.com/services/T" + _body(rng, string.ascii_uppercase + string.digits, 8)
                                  + "/B" + _body(rng, string.ascii_uppercase + string.digits, 10) + "/" + _body(rng, ALNUM, 24)),
    "jwt": _jwt,
    "openssh_private_key": lambda rng: _pem(rng, "OPENSSH PRIVATE KEY"),
    "ec_private_key": lambda rng: _pem(rng, "EC PRIVATE KEY"),
    "pgp_private_key_block": lambda rng: _pem(rng, "PGP PRIVATE KEY BLOCK"),
    "password_in_url": lambda rng: _body(rng, ALNUM, 14),  # Placed as postgres://user:<value>@host.
}

# Where a value sits: {v} is the value. The URL format needs its own context.
CONTEXTS = (
    "STRIPE_KEY={v}\nDEBUG=false",
    "service:\n  credentials: {v}\n  region: eu-west-1",
    '{{"name": "deploy", "value": "{v}"}}',
    "export DEPLOY_CREDENTIAL={v}",
    "curl -H 'Authorization: Bearer {v}' https://api.example.com/v1/items",
    "I pasted my key {v} into the forum by mistake, please ignore it.",
)
URL_CONTEXT = "DATABASE_URL=postgres://app_user:{v}@db.internal.example.com:5432/app"


def examples(per_format: int = 12, seed: int = 0) -> list[tuple[str, str, str]]:
  """(format, text, value) triples: every format in every context, `per_format` values each."""
  rng = random.Random(seed)
  out = []
  for name, make in FORMATS.items():
    for i in range(per_format):
      value = make(rng)
      context = URL_CONTEXT if name == "password_in_url" else CONTEXTS[i % len(CONTEXTS)]
      out.append((name, context.format(v=value), value))
  return out


def recall(per_format: int = 12, seed: int = 0) -> dict[str, dict[str, int]]:
  """{format: {"found", "total"}}: a value counts as found when no character run of it longer
  than 8 survives redaction (any PII type: the point is that it does not reach the shards)."""
  table: dict[str, dict[str, int]] = {}
  for name, text, value in examples(per_format, seed):
    redacted, _ = pii.redact(text)
    leaked = any(value[i:i + 8] in redacted for i in range(0, max(len(value) - 7, 1)))
    row = table.setdefault(name, {"found": 0, "total": 0})
    row["total"] += 1
    row["found"] += not leaked
  return table
