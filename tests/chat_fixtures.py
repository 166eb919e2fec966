"""Shared by the chat tests: a tokenizer trained on data/chat, and the chat data job run on it."""

import json
import os

import sentencepiece as spm

from pipelines import train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_DIR = os.path.join(REPO, "data", "chat")


def load_jsonl(name):
  with open(os.path.join(CHAT_DIR, name)) as f:
    return [json.loads(line) for line in f]


def categories():
  with open(os.path.join(CHAT_DIR, "categories.json")) as f:
    return json.load(f)["categories"]


def follows_category(prompt: str, response: str) -> bool:
  """The ground truth of data/chat: the response names a word of the category the prompt asks for."""
  cats = categories()
  asked = [c for c in cats if c in prompt.lower()]
  words = {w.strip(".,!?").lower() for w in response.split()}
  return len(asked) == 1 and bool(words & set(cats[asked[0]]))


def train_chat_tokenizer(directory) -> str:
  """A SentencePiece model with Gemma's settings trained on the text of data/chat; returns its path."""
  lines = []
  for name in ("instructions.jsonl", "preferences.jsonl"):
    for r in load_jsonl(name):
      for key in ("prompt", "completion", "chosen", "rejected"):
        if isinstance(r.get(key), str):
          lines.append(r[key])
      for m in r.get("messages", []) + (r["prompt"] if isinstance(r.get("prompt"), list) else []):
        lines.append(m["content"])
  sample = os.path.join(directory, "sample.txt")
  with open(sample, "w") as f:
    f.write("\n".join(lines) + "\n")
  proto = train_tokenizer.train_sentencepiece(sample, train_tokenizer.gemma_trainer_spec(vocab_size=512))
  path = os.path.join(directory, "tokenizer.model")
  with open(path, "wb") as f:
    f.write(proto)
  return path


def processor(path: str) -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_file=path)


# ---- the post-training chain on the tiny model, built once per test session (cached on disk) ----

TINY = ["--gin.build_model.config_name='tiny'"]
SFT_STEPS, RM_STEPS, RL_STEPS = 60, 100, 40


def _run(module, args):
  """Runs `python -m module args` as the workflow does; returns its stdout (raises on failure)."""
  import subprocess
  import sys
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
  if out.returncode:
    raise AssertionError(f"python -m {module} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
  return out.stdout


def post_training_chain(tmp_path_factory, upto: str):
  """{tokenizer, data, sft, rm, rl} directories, running each stage (CLI, tiny model) once."""
  root = tmp_path_factory.getbasetemp() / "chat_chain"
  root.mkdir(exist_ok=True)
  paths = {k: str(root / k) for k in ("data", "sft", "rm", "rl")}
  paths["tokenizer"] = str(root / "tokenizer.model")
  stages = ["data", "sft", "rm", "rl"]
  for stage in stages[:stages.index(upto) + 1]:
    done = root / f"{stage}.done"
    if done.exists():
      continue
    if stage == "data":
      from pipelines import chat_data
      train_chat_tokenizer(str(root))
      chat_data.chat_data(os.path.join(CHAT_DIR, "*.jsonl"), paths["tokenizer"], paths["data"],
                          max_length=64, validation_fraction=0.2)
      log = ""
    elif stage == "sft":
      log = _run("model.train", ["--gin_file=gin/runs/sft.gin", "--gin.INIT_CHECKPOINT=None",
                                 f"--gin.DATA_DIR='{paths['data']}'", f"--gin.MODEL_DIR='{paths['sft']}'", *TINY,
                                 f"--gin.TRAIN_STEPS={SFT_STEPS}", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
                                 "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=20", "--gin.SAVE_PERIOD=60",
                                 "--gin.LEARNING_RATE=0.003"])
    elif stage == "rm":
      log = _run("model.reward_model", ["--gin_file=gin/runs/reward_model.gin",
                                        f"--gin.INIT_CHECKPOINT='{paths['sft']}/checkpoints/{SFT_STEPS}'",
                                        f"--gin.DATA_DIR='{paths['data']}'", f"--gin.MODEL_DIR='{paths['rm']}'", *TINY,
                                        f"--gin.TRAIN_STEPS={RM_STEPS}", "--gin.MAX_LENGTH=32",
                                        "--gin.LEARNING_RATE=0.003", f"--gin.SAVE_PERIOD={RM_STEPS}"])
    else:
      log = _run("model.rlhf", ["--gin_file=gin/runs/rlhf.gin",
                                f"--gin.POLICY_CHECKPOINT='{paths['sft']}/checkpoints/{SFT_STEPS}'",
                                f"--gin.REWARD_CHECKPOINT='{paths['rm']}/checkpoints/{RM_STEPS}'",
                                f"--gin.DATA_DIR='{paths['data']}'", f"--gin.MODEL_DIR='{paths['rl']}'", *TINY,
                                f"--gin.TRAIN_STEPS={RL_STEPS}", "--gin.MAX_LENGTH=32", "--gin.MAX_DECODE_LEN=12",
                                "--gin.LEARNING_RATE=0.001", "--gin.EVAL_PERIOD=20", f"--gin.SAVE_PERIOD={RL_STEPS}"])
    (root / f"{stage}.log").write_text(log)
    done.write_text("")
  return paths


def read_metrics(model_dir: str, split: str) -> list[dict]:
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


# ---- duplicates across input files, for the chat data job's two layouts (tests/test_chat_data.py) ----


def _sft(doc_id: str, prompt: str, answer: str) -> str:
  return json.dumps({"id": doc_id, "prompt": prompt, "completion": answer})


def duplicate_files() -> dict[str, list[str]]:
  """Two input files whose duplicates can only be decided across files: an exact copy whose
  winner (the smaller id) is in the other file; an id with two texts in two files, one of them an
  exact copy of a smaller id (so both copies go); an id with two texts and no copy (one is kept);
  a preference pair copied under another id; an identical line in both files (its id is the line's
  hash); a line that is not JSON."""
  same_line = _sft("", "Name a metal for the layout test.", "Here is one: iron.")
  pair = {"prompt": "Name a bird for the layout test.", "chosen": "Here is one: crow.",
          "rejected": "Here is one: lime."}
  return {
      "dups_a.jsonl": [
          _sft("zz-late", "Name a fruit for the layout test.", "Here is one: pear."),
          _sft("twin", "Name a tool for the layout test.", "Here is one: hammer."),
          _sft("split", "Name a colour for the layout test.", "Here is one: teal."),
          json.dumps({"id": "pp-2", **pair}),
          same_line,
      ],
      "dups_b.jsonl": [
          _sft("aa-early", "Name a fruit for the layout test.", "Here is one: pear."),
          _sft("twin", "Name a tool for the layout test.", "Here is one: saw."),
          _sft("aa-colour", "Name a colour for the layout test.", "Here is one: teal."),
          _sft("split", "Name a colour for the layout test.", "Here is one: navy."),
          json.dumps({"id": "pp-1", **pair}),
          same_line,
          "not json",
      ],
  }
