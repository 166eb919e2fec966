"""A labelled toxicity set: abusive sentences from templates vs. real and tricky clean text.

Train and eval are disjoint by construction, not by a random split of one pool:

* clean backgrounds come from different stdlib modules (``sentences.TRAIN_MODULES`` vs.
  ``EVAL_MODULES``; sentences that occur in both are kept out of eval);
* toxic sentences come from different template lists (``_TOXIC_TRAIN`` vs. ``_TOXIC_EVAL``);
* hand-written tricky clean sentences (Scunthorpe, assess, cocktail, Dick Cavett, ...) are
  split into two lists as well.

The slot fillers (insults, profanity) are shared, as the word lists are shared at run time.
Some toxic examples are obfuscated (``f*ck``, ``sh1t``, ``fuuuck``) and some documents are long:
a long clean page with one mild swear word is labelled clean, a page with two or more abusive
sentences among up to eight clean ones (a comment thread with abuse in it) is labelled toxic.
Everything is seeded: ``build("train")`` is the same list on every run.
"""

from __future__ import annotations

import random

from pipelines.labelled import sentences

CLEAN, TOXIC = 0, 1

_INSULTS = (
    "idiot", "moron", "loser", "bastard", "asshole", "dickhead", "jackass", "dumbass", "scumbag",
    "piece of shit", "bitch", "cunt", "twat", "wanker", "motherfucker", "retard", "imbecile",
)
_ADJECTIVES = (
    "stupid", "fucking", "worthless", "pathetic", "disgusting", "ugly", "brainless", "shitty",
    "useless", "goddamn",
)
_OTHER_LANGS_TOXIC = (
    "Du bist so ein Arschloch, verpiss dich.", "Halt die Fresse, du Hurensohn.",
    "Was für eine Scheiße, du Wichser.", "Ta gueule, connard.", "Va te faire enculer, salope.",
    "Putain, quel abruti de merde.", "Eres un pendejo de mierda.", "Vete a la mierda, cabrón.",
    "Qué gilipollas eres, hijo de puta.", "Du dumme Schlampe, fick dich.",
    "Espèce de bâtard, nique ta mère.", "Cállate, puto imbécil.",
)
_OTHER_LANGS_CLEAN = (
    "Die Funktion gibt eine Liste der Dateien im Verzeichnis zurück.",
    "Der Zug nach Berlin fährt um acht Uhr ab.", "Bitte lesen Sie die Dokumentation sorgfältig.",
    "La fonction renvoie la liste des fichiers du répertoire.",
    "Le train pour Lyon part à huit heures.", "Merci de lire attentivement la documentation.",
    "La función devuelve la lista de archivos del directorio.",
    "El tren a Madrid sale a las ocho.", "Por favor, lea la documentación con atención.",
    "Il modulo fornisce funzioni per leggere file compressi.",
    "Das Konzert in der Philharmonie war ausverkauft.", "Nous avons visité le musée du Louvre.",
)

_TOXIC_TRAIN = (
    "You are a {adj} {insult}.", "Shut up, you {insult}.", "What a {adj} {insult} you are.",
    "Go fuck yourself, {insult}.", "Nobody cares what you think, you {adj} {insult}.",
    "Get lost, {insult}, nobody wants you here.", "This is {adj} bullshit and you know it.",
    "Only a {insult} would write something this {adj}.", "Fuck off and die, {insult}.",
    "Hey {insult}, learn to read before you post this shit.",
    "Your mother is a {adj} whore.", "I hope you choke, you {adj} {insult}.",
)
_TOXIC_EVAL = (
    "Listen here, you {adj} {insult}.", "Nobody asked you, {insult}.",
    "You {adj} {insult}, get out of this thread.", "Stop posting, you {adj} {insult}.",
    "Every word you write is {adj} shit, {insult}.", "Damn you, {insult}, fuck off.",
    "You are nothing but a {adj} {insult}.", "Kill yourself, you {adj} {insult}.",
    "Screw you and your {adj} opinions, {insult}.", "What the fuck is wrong with you, {insult}?",
)

# Abuse without a single listed word: only the classifier's n-grams can catch these.
_HARD_TOXIC_TRAIN = (
    "You are so dumb it hurts.", "Nobody likes you, you ugly freak.",
    "You worthless piece of garbage.", "Crawl back under your rock, you pathetic creep.",
    "Go die in a ditch.", "You're a disgusting pig.", "Shut your mouth, you clueless clown.",
    "You are a brainless waste of oxygen.",
)
_HARD_TOXIC_EVAL = (
    "You are so stupid and ugly.", "Everyone here hates you, you pathetic clown.",
    "Get out, you brainless freak.", "You useless waste of space.", "Go jump off a bridge.",
    "What a disgusting excuse for a human.", "Shut up, you ugly pig.",
    "Nobody wants you here, you clueless creep.",
)

# Clean sentences with words that contain, or look like, profanity.
_TRICKY_TRAIN = (
    "Scunthorpe United won the match on Saturday.", "We need to assess the risk before the release.",
    "The class attribute is shared by all instances.", "She ordered a cocktail at the hotel bar.",
    "Dick Cavett interviewed many famous musicians on his talk show.",
    "The rooster, or cock, crowed at dawn.", "Middlesex and Essex are English counties.",
    "Read the passage and answer the questions.", "The assassin was never caught.",
    "Add the shiitake mushrooms to the pan.", "Charles Dickens wrote Bleak House.",
    "The bass player tuned his instrument.", "The analysis compares the two classes.",
    "The pilot climbed into the cockpit.", "The hancock tower is in Boston.",
    "The fire retardant coating protects the wood.", "Call the method with a compass heading.",
    "The embassy issued a new passport.", "A pussy willow grows by the river.",
    "The tit is a small songbird.", "Mass assignment can be dangerous in web frameworks.",
    "That was a damn good concert, honestly.", "The test suite is a bloody mess, but it passes.",
)
_TRICKY_EVAL = (
    "Scunthorpe is a town in North Lincolnshire.", "Teachers assess each student's progress.",
    "Every class defines its own constructor.", "The cocktail party starts at eight.",
    "Dick Cavett hosted a late night show for years.", "Moby Dick is a novel by Herman Melville.",
    "The cockatoo is a parrot.", "Sussex has many old churches.", "The grass needs cutting.",
    "Use a subclass to override the method.", "He is a classical pianist from Essex.",
    "The hotel in Penistone has a nice view.", "Cumulative sums are computed with accumulate.",
    "The document was classified as confidential.", "Her assistant booked the tickets.",
    "The harpsichord has a bright sound.", "Password hashes should be salted.",
    "Hell's Kitchen is a neighbourhood in Manhattan.", "The shuttlecock flew over the net.",
    "Crap, I forgot to save the file, but the editor kept a backup.",
)
# Mild words that a long clean page may contain once.
_MILD_ASIDES = (
    "Damn, that took a while.", "This API is crap, but it works.", "Oh shit, I forgot the flag.",
    "What a bloody mess the old code was.", "That bug was a pain in the ass.",
)


def _obfuscate(text: str, rng: random.Random) -> str:
  """Hides the profanity the way people do: masking, leetspeak, repeated letters."""
  words = text.split(" ")
  style = rng.randrange(3)
  for i, word in enumerate(words):
    core = word.strip(".,!?")
    if core.lower() not in ("fuck", "fucking", "shit", "bitch", "asshole", "bullshit", "cunt"):
      continue
    if style == 0:
      new = core[0] + "*" * (len(core) - 2) + core[-1] if len(core) <= 4 else core[0] + "*" + core[2:]
    elif style == 1:
      new = core.replace("i", "1").replace("s", "$").replace("o", "0")
    else:
      new = core[:2] + core[1] * 3 + core[2:]
    words[i] = word.replace(core, new)
  return " ".join(words)


def _toxic(templates: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
  out = []
  for _ in range(n):
    text = rng.choice(templates).format(insult=rng.choice(_INSULTS), adj=rng.choice(_ADJECTIVES))
    if rng.random() < 0.3:
      text = _obfuscate(text, rng)
    if rng.random() < 0.3:
      text = text.upper() if rng.random() < 0.3 else text.lower()
    out.append(text)
  return out


def build(split: str, seed: int = 0) -> list[tuple[str, int]]:
  """``[(text, label)]`` for ``split`` in {"train", "eval"}, in a fixed order."""
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
  rng = random.Random(f"{split}-{seed}")
  train_clean = sentences.sentences(sentences.TRAIN_MODULES)
  if split == "train":
    clean, templates, tricky, hard = train_clean, _TOXIC_TRAIN, _TRICKY_TRAIN, _HARD_TOXIC_TRAIN
    other_toxic, other_clean = _OTHER_LANGS_TOXIC[::2], _OTHER_LANGS_CLEAN[::2]
  else:
    seen = set(train_clean)
    clean = [s for s in sentences.sentences(sentences.EVAL_MODULES) if s not in seen]
    templates, tricky, hard = _TOXIC_EVAL, _TRICKY_EVAL, _HARD_TOXIC_EVAL
    other_toxic, other_clean = _OTHER_LANGS_TOXIC[1::2], _OTHER_LANGS_CLEAN[1::2]
  toxic = _toxic(templates, len(clean) // 2, rng) + list(other_toxic) + list(hard)
  examples = [(s, CLEAN) for s in clean + list(tricky) + list(other_clean)]
  examples += [(s, TOXIC) for s in toxic]
  # Long documents: density matters, one aside does not make a page toxic.
  for _ in range(len(clean) // 10):
    page = rng.sample(clean, 8)
    page.insert(rng.randrange(len(page)), rng.choice(_MILD_ASIDES))
    examples.append((" ".join(page), CLEAN))
    page = rng.sample(toxic, rng.randint(2, 5)) + rng.sample(clean, rng.randint(2, 8))
    rng.shuffle(page)
    examples.append((" ".join(page), TOXIC))
  return examples
