"""Writes the small chat sets in this folder (run from the repository root; output is deterministic).

    python data/chat/make_chat_data.py

* categories.json: four categories of ten words; the ground truth of every set below.
* instructions.jsonl: SFT examples. A user asks for a word of a category ("Name a fruit."), the
  model answers "Here is one: <word>." with a word of that category. Single turns in the three
  formats users bring ({"messages"} with "assistant" or "model", {"prompt", "completion"}), some
  with a system message, and two-turn conversations ("Another one, please.").
* preferences.jsonl: {"prompt", "chosen", "rejected"} pairs with a programmatic ground truth: the
  chosen answer names a word of the asked category, the rejected one a word of another category,
  in the same sentence. In half the pairs the wrong word is the longer one, so a length-only
  baseline is near chance.

Every example was generated here from the word lists; nothing is downloaded.
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
CATEGORIES = {
    "colour": ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "grey", "purple"],
    "animal": ["cat", "dog", "horse", "cow", "sheep", "mouse", "lion", "tiger", "bear", "goat"],
    "fruit": ["apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon", "lime"],
    "tool": ["hammer", "saw", "drill", "spade", "rake", "wrench", "chisel", "axe", "pliers", "ladder"],
}
PROMPTS = ["Name a {c}.", "Tell me one {c}.", "Give me a {c}, please.", "Which {c} do you like?",
           "Say any {c}.", "Pick a {c} for me.", "Can you think of a {c}?", "I need a {c}."]
ANSWER = "Here is one: {w}."
FOLLOW_UP = "Another one, please."
SYSTEM = "You answer with one short sentence."


def ask(template, category):
  return template.format(c=category).replace(" a animal", " an animal")


def answer(word):
  return ANSWER.format(w=word)


def instructions(rng):
  out = []
  for c, words in sorted(CATEGORIES.items()):
    for t, template in enumerate(PROMPTS):
      for i, w in enumerate(words):
        prompt = ask(template, c)
        n = len(out)
        if n % 10 == 3:
          out.append({"prompt": prompt, "completion": answer(w)})
        elif n % 10 == 7:
          out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer(w)}]})
        elif n % 10 == 5:
          other = words[(i + 1 + t) % len(words)]
          out.append({"messages": [{"role": "user", "content": prompt}, {"role": "model", "content": answer(w)},
                                   {"role": "user", "content": FOLLOW_UP},
                                   {"role": "model", "content": answer(other)}]})
        else:
          out.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer(w)}]})
  rng.shuffle(out)
  return out


def preferences(rng):
  out, balance = [], 0
  names = sorted(CATEGORIES)
  for c in names:
    for template in PROMPTS:
      for w in CATEGORIES[c]:
        # Half the pairs have the longer wrong answer, so answer length says nothing about quality.
        longer = balance <= 0
        others = [x for n in names if n != c for x in CATEGORIES[n] if len(x) != len(w)]
        wrong = [x for x in others if (len(x) > len(w)) == longer] or others
        prompt = ask(template, c)
        pair = {"prompt": prompt, "chosen": answer(w), "rejected": answer(rng.choice(wrong))}
        balance += 1 if len(pair["rejected"]) > len(pair["chosen"]) else -1
        if len(out) % 5 == 0:
          pair["prompt"] = [{"role": "user", "content": prompt}]
        out.append(pair)
  rng.shuffle(out)
  return out


def write_jsonl(name, records):
  with open(os.path.join(HERE, name), "w") as f:
    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


def main():
  with open(os.path.join(HERE, "categories.json"), "w") as f:
    json.dump({"categories": CATEGORIES, "prompts": PROMPTS, "answer": ANSWER}, f, indent=1, sort_keys=True)
    f.write("\n")
  write_jsonl("instructions.jsonl", instructions(random.Random(0)))
  write_jsonl("preferences.jsonl", preferences(random.Random(1)))


if __name__ == "__main__":
  main()
