"""Toxicity evaluation material built independently of the detector and of its training data.

    python -m pipelines.labelled.toxicity_independent   # counts; the scores: benchmarks.pii_toxicity_eval

``toxicity_data.py`` makes its eval toxic half from insult templates whose slot words are the
word lists' own, so it measures how well the classifier learnt the lists. This set does not:

* ``TOXIC``: hand-written abuse, not produced by ``toxicity_data``'s templates (a test checks
  this), in several registers (threats, dehumanising, condescension, harassment, sarcasm,
  comment-thread rants), with obfuscations the training generator never makes (dots and dashes
  between letters, homoglyphs, phonetic spellings, censor words) and in Italian, Dutch and
  Portuguese, which no word list covers. At least ``MIN_UNLISTED`` of the texts contain no
  word-list entry even after the detector's own normalisation (a test checks that too);
* clean: paragraphs of real pages -- the Debian Administrator's Handbook in seven languages
  (``clean_pages.page_texts``; not used for the sample) -- and docstring sentences of stdlib
  modules used neither for training nor for the template eval set (``CLEAN_MODULES``).
"""

from __future__ import annotations

import os

from pipelines import toxicity
from pipelines.labelled import clean_pages, sentences

MIN_UNLISTED = 0.5  # Share of TOXIC with no word-list entry (tests/test_toxicity.py checks it).
HANDBOOK_LANGUAGES = ("en-US", "de-DE", "fr-FR", "es-ES", "it-IT", "nl-NL", "pt-BR")
CLEAN_MODULES = ("sqlite3", "statistics", "fractions", "calendar", "pprint", "gzip", "hashlib",
                 "configparser", "uuid", "xml.dom.minidom", "mailbox", "ftplib", "wave", "sched")
MIN_PARAGRAPH_WORDS = 8

TOXIC = (
    # Threats and wishes of harm.
    "If I ever see you at the meetup I will break your jaw.",
    "Keep talking and I'll find out where you live.",
    "People like you should be put down like rabid dogs.",
    "I hope your house burns down with you inside it.",
    "Watch your back, I know which car is yours.",
    "Someone should run you over, it would improve this town.",
    "Delete your account before somebody deletes you.",
    "You'd better pray we never meet in person.",
    # Dehumanising and degrading.
    "You are vermin and everyone can smell it.",
    "Subhuman trash like you doesn't deserve a keyboard.",
    "Your whole family is a genetic dead end.",
    "What a repulsive little maggot you are.",
    "You're a parasite feeding on other people's work.",
    "Nobody would miss you if you vanished tomorrow.",
    "Your existence is an insult to everyone in this room.",
    "You're a walking, talking waste of skin.",
    # Condescension and name-calling without listed words.
    "Bless your heart, you really are too thick to understand any of this.",
    "Do the world a favour and stop breeding.",
    "Were you dropped on your head as a baby, or is this natural talent?",
    "Even a toddler would be embarrassed by a brain like yours.",
    "You absolute knuckle-dragging buffoon.",
    "Go back to licking windows, halfwit.",
    "You spineless weasel, you never had the guts to say it to my face.",
    "Listen, numbskull, nobody asked for your garbage opinion.",
    "You are an embarrassment to your parents and to the human race.",
    "Your mum must be so ashamed of the thing she raised.",
    "What a sad, friendless little troll you are.",
    "Only a drooling simpleton could write a patch this bad.",
    # Harassment and piling on.
    "Everyone, go flood her inbox until she quits.",
    "Let's make sure this clown never gets hired anywhere again.",
    "We all know you cheated your way in, you fraud.",
    "Post her address, she needs to learn a lesson.",
    "You should be fired and then publicly humiliated.",
    "Crawl into a hole and stay there, you miserable creature.",
    # Sarcasm and passive aggression with a clear target.
    "Wow, another brilliant idea from the village idiot.",
    "Congratulations on being the dumbest person on the mailing list, again.",
    "Oh look, the resident clown learnt how to open a pull request.",
    "Thanks for proving that evolution can run backwards.",
    # Comment-thread rants (several sentences).
    "I read your post twice and it got worse. You are clueless, arrogant and wrong about "
    "everything. Nobody here respects you. Leave.",
    "Every single reply from you is poison. You drove three maintainers away. Get lost and "
    "never come back, you toxic leech.",
    "This reviewer is a power-tripping tyrant. He rejects everything out of spite. Someone "
    "should teach him some manners with a baseball bat.",
    "Stop pretending you know anything. You're a fake, a liar and a coward, and the whole "
    "forum is laughing at you.",
    # Obfuscations the training generator does not make.
    "You stupid f.u.c.k, read the manual.",
    "Shut up, you s-h-i-t-h-e-a-d.",
    "What a m0r0n1c take, you utter d0lt.",
    "You're such a phucking loser.",
    "Go fvck yourself, nobody wants you here.",
    "You worthless a-hole.",
    "Sh!t for brains, as usual.",
    "You're a b!tch and everybody knows it.",
    "Go to h3ll, you miserable cre3p.",
    "What an absolute \u0456d\u0456ot you are.",  # Cyrillic i.
    "You \u0455tupid l\u043eser.",  # Cyrillic s and o.
    "Eat \u0455h\u0456t and die.",
    "You effing imbecile, stop posting.",
    "Shut your piehole, you bleeping moron.",
    "You're a total biatch.",
    "Go fook yourself, mate.",
    "You absolute azzhole.",
    "STFU n00b, no one cares.",
    "You are a 🤡 and a 💩, just leave.",
    "You dumb b-i-t-c-h.",
    # Italian (no Italian word list).
    "Sei un cretino, stai zitto.",
    "Vaffanculo, brutto stronzo.",
    "Che idiota che sei, non capisci niente.",
    "Sei solo un pezzo di merda.",
    "Vai a morire ammazzato, coglione.",
    "Testa di cazzo, impara a leggere.",
    "Fai schifo, nessuno ti vuole qui.",
    "Sei una vergogna, deficiente.",
    # Dutch (no Dutch word list).
    "Je bent een vuile klootzak.",
    "Houd je bek, sukkel.",
    "Wat een achterlijke idioot ben jij.",
    "Krijg de tyfus, eikel.",
    "Je bent een waardeloze lul.",
    "Rot op, stomme trut.",
    "Kankerlijer, niemand wil je hier.",
    "Wat ben jij een domme lafaard.",
    # Portuguese (no Portuguese word list).
    "Vai tomar no cu, seu idiota.",
    "Cala a boca, seu imbecil de merda.",
    "Você é um otário sem cérebro.",
    "Vai se foder, filho da puta.",
    "Seu babaca, ninguém te suporta.",
    "Que burro você é, inútil.",
    "Você é uma vergonha, seu verme.",
    "Morre, desgraçado.",
)


def unlisted(text: str) -> bool:
  """True if no token of ``text`` is a word-list entry, after the detector's normalisation."""
  lex = toxicity.lexicon()
  return all(lex.category(token) is None for token in toxicity.tokens(text))


def clean_paragraphs(languages=HANDBOOK_LANGUAGES, pages: int = 0) -> list[tuple[str, str]]:
  """``(where, text)`` of real clean paragraphs: handbook lines of at least MIN_PARAGRAPH_WORDS
  words (deduplicated: untranslated pages repeat the English text), then CLEAN_MODULES sentences.
  Without the handbook package, only the docstrings."""
  out, seen = [], set()
  if os.path.isdir(clean_pages.HANDBOOK_DIR):
    for language in languages:
      for name, text in clean_pages.page_texts(language, pages):
        for line in text.split("\n"):
          if len(line.split()) >= MIN_PARAGRAPH_WORDS and line not in seen:
            seen.add(line)
            out.append((f"{language}/{name}", line))
  excluded = set(sentences.sentences(sentences.TRAIN_MODULES + sentences.EVAL_MODULES))
  for sentence in sentences.sentences(CLEAN_MODULES):
    if sentence not in excluded and sentence not in seen:
      out.append(("stdlib docstrings", sentence))
  return out


def main() -> None:
  share = sum(map(unlisted, TOXIC)) / len(TOXIC)
  print(f"{len(TOXIC)} hand-written toxic texts, {share:.3f} with no word-list entry")
  print(f"{len(clean_paragraphs())} clean paragraphs")


if __name__ == "__main__":
  main()
