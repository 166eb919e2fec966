"""PII recall on values the detectors were not written for: Faker locales outside the six of
pipelines/labelled/pii_data.py, in each locale's own formats (phone layouts, IBAN countries).

    python -m pipelines.labelled.pii_other_locales [--per_type=40] [--seed=0]

Each value is planted in a sentence without a PII keyword, so context rules do not help; a value
counts as found when one hit covers it exactly. Seeded, so the figures repeat.
"""

from __future__ import annotations

import argparse
import collections

from pipelines import pii

LOCALES = ("nl_NL", "pt_BR", "pl_PL", "sv_SE", "en_AU", "en_CA", "da_DK", "cs_CZ", "ja_JP")
SENTENCE = "The value {} was given in the form."
GENERATORS = {
    pii.EMAIL: lambda fake: fake.email(),
    pii.PHONE: lambda fake: fake.phone_number(),
    pii.IBAN: lambda fake: fake.iban(),
    pii.IP_ADDRESS: lambda fake: fake.ipv4_public(),
}


def recall(per_type: int, seed: int) -> dict[tuple[str, str], tuple[int, int, list[str]]]:
  """``{(locale, type): (found, total, missed values)}``."""
  from faker import Faker  # Test/benchmark-only dependency.

  table = {}
  for locale in LOCALES:
    fake = Faker(locale)
    fake.seed_instance(seed)
    for pii_type, generate in GENERATORS.items():
      found, missed = 0, []
      for _ in range(per_type):
        try:
          value = generate(fake)
        except AttributeError:  # The locale has no such provider.
          break
        text = SENTENCE.format(value)
        start = text.index(value)
        hits = {(m.type, m.start, m.end) for m in pii.find_pii(text)}
        if (pii_type, start, start + len(value)) in hits:
          found += 1
        else:
          missed.append(value)
      total = found + len(missed)
      if total:
        table[(locale, pii_type)] = (found, total, missed)
  return table


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per_type", type=int, default=40)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  table = recall(args.per_type, args.seed)
  by_type: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for (locale, pii_type), (found, total, missed) in sorted(table.items()):
    by_type[pii_type][0] += found
    by_type[pii_type][1] += total
    print(f"{locale:<6} {pii_type:<11} {found:>3}/{total:<3} missed e.g. {missed[:3]}")
  for pii_type, (found, total) in sorted(by_type.items()):
    print(f"ALL    {pii_type:<11} {found:>4}/{total:<4} recall {found / total:.3f}")


if __name__ == "__main__":
  main()
