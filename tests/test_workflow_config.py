"""workflow.config, workflow.fingerprint and the run-dir lock: bad configs fail before anything runs.

Fast: nothing here runs a stage.
"""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from workflow import config as config_lib
from workflow import fingerprint as fp
from workflow import runner
from workflow import stages as stages_lib

REPO_ROOT = stages_lib.REPO_ROOT
SAMPLE = os.path.join(REPO_ROOT, "configs", "sample.yaml")


@pytest.fixture
def raw():
  with open(SAMPLE) as f:
    return yaml.safe_load(f)


def parse(raw, tmp_path):
  return config_lib.parse(raw, "test.yaml", run_dir=str(tmp_path / "run"))


def test_sample_config_is_valid_and_in_stage_order(raw, tmp_path):
  cfg = parse(raw, tmp_path)
  assert list(cfg.order) == [s for s in stages_lib.ORDER if s in raw["stages"]]
  assert cfg.wiring["extract"] == {"warc": config_lib.EXTERNAL_WARCS}
  assert cfg.wiring["dedupe"] == {"docs": "toxicity"}
  assert cfg.wiring["tokenize"] == {"docs": "decontaminate", "tokenizer": "train_tokenizer"}
  assert cfg.wiring["memorization"] == {"model": "pretrain", "data": "tokenize"}
  assert cfg.wiring["eval"] == {"model": "pretrain", "data": "tokenize"}
  assert cfg.downstream("dedupe") >= {"train_tokenizer", "tokenize", "pretrain", "eval", "report"}
  assert "extract" not in cfg.downstream("dedupe")


def test_post_training_stages_are_wired_apart_from_pretraining(raw, tmp_path):
  cfg = parse(raw, tmp_path)
  order = list(cfg.order)
  assert order.index("eval") < order.index("chat_data") < order.index("sft") < order.index(
      "reward_model") < order.index("rlhf") < order.index("chat_sample") < order.index("benchmarks")
  assert cfg.wiring["chat_data"] == {"tokenizer": "train_tokenizer"}
  assert cfg.wiring["sft"] == {"model": "pretrain", "data": "chat_data"}
  assert cfg.wiring["reward_model"] == {"model": "sft", "data": "chat_data"}
  assert cfg.wiring["rlhf"] == {"policy": "sft", "reward": "reward_model", "data": "chat_data"}
  assert cfg.wiring["chat_sample"] == {"model": "rlhf", "data": "chat_data"}
  # The pretraining evaluations keep the pretrained model and its data.
  assert cfg.wiring["benchmarks"] == {"model": "pretrain", "data": "tokenize"}
  assert cfg.downstream("pretrain") >= {"sft", "reward_model", "rlhf", "chat_sample"}
  assert "sft" not in cfg.downstream("reward_model")


def test_post_training_commands(raw, tmp_path):
  cfg = parse(raw, tmp_path)
  run = tmp_path / "run"
  for stage, steps in (("pretrain", 300), ("sft", 60), ("reward_model", 50)):
    os.makedirs(run / stages_lib.BY_NAME[stage].output / "checkpoints" / str(steps))
  def command(stage):
    spec = stages_lib.BY_NAME[stage]
    inputs = {slot: str(run / stages_lib.BY_NAME[up].output) for slot, up in cfg.wiring[stage].items()}
    return spec.command(stages_lib.StageContext(run_dir=str(run), options=cfg.options[stage],
                                                inputs=inputs, output=str(run / spec.output),
                                                run=cfg.shared))
  sft = command("sft")
  assert sft[2] == "model.train" and f"--gin.INIT_CHECKPOINT='{run}/model/checkpoints/300'" in sft
  assert f"--gin.DATA_DIR='{run}/chat_data'" in sft and "--gin.TRAIN_STEPS=60" in sft
  rl = command("rlhf")
  assert f"--gin.POLICY_CHECKPOINT='{run}/sft/checkpoints/60'" in rl
  assert f"--gin.REWARD_CHECKPOINT='{run}/reward_model/checkpoints/50'" in rl
  assert "--chat" in command("chat_sample")
  assert "--num_shards=1" in command("chat_data")  # the job's CLI default (0) crashes it


def test_leaving_a_stage_out_rewires_to_the_previous_one(raw, tmp_path):
  del raw["stages"]["toxicity"]
  cfg = parse(raw, tmp_path)
  assert cfg.wiring["dedupe"] == {"docs": "pii"}
  raw["stages"]["tokenize"] = {"inputs": {"docs": "quality"}}
  assert parse(raw, tmp_path).wiring["tokenize"]["docs"] == "quality"


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["stages"].update(polish={}), "unknown stage(s) ['polish']"),
    (lambda r: r["stages"]["quality"].update(min_wrds=3), "stages.quality: unknown option 'min_wrds'"),
    (lambda r: r["stages"]["quality"].update(min_words="three"), "stages.quality.min_words: expected int"),
    (lambda r: r["stages"]["pretrain"].update(train_steps=True), "stages.pretrain.train_steps: expected int"),
    (lambda r: r["stages"]["quality"].update(shard_layout="per_file"),
     "stages.quality.shard_layout: expected one of ['by_size', 'per_input']"),
    (lambda r: r.update(colour="red"), "unknown key(s) ['colour']"),
    (lambda r: r["inputs"].update(warcs="data/nowhere/*.warc.gz"), "inputs.warcs: no file matches"),
    (lambda r: r["stages"]["quality"].update(url_blocklist="no/such/list.txt"),
     "stages.quality.url_blocklist: file 'no/such/list.txt' does not exist"),
    (lambda r: r["model"].update(gin_files=["gin/nope.gin"]), "model.gin_files: file 'gin/nope.gin'"),
    (lambda r: r["stages"]["pretrain"].pop("train_steps"), "'train_steps' is required"),
    (lambda r: r["stages"]["sft"].pop("train_steps"), "stages.sft: option 'train_steps' is required"),
    (lambda r: r["stages"]["dedupe"].update(inputs={"docs": "train_tokenizer"}),
     "'train_tokenizer' produces tokenizer, not docs"),
    (lambda r: r["stages"]["dedupe"].update(inputs={"docs": "crawl"}), "'crawl' is not a stage of this config"),
    (lambda r: r["stages"]["tokenize"].update(inputs={"text": "dedupe"}), "tokenize.inputs: unknown key(s) ['text']"),
    (lambda r: r.pop("inputs"), "input 'warc' (warc): no earlier stage of this config produces it"),
    (lambda r: [r["stages"].pop(s) for s in ("train_tokenizer",)],
     "stages.tokenize: input 'tokenizer' (tokenizer): no earlier stage"),
    (lambda r: r["stages"].update(crawl={"seeds": "configs/sample.yaml"}), "either inputs.warcs or a crawl stage"),
])
def test_bad_config_is_a_clear_error(raw, tmp_path, mutate, message):
  mutate(raw)
  with pytest.raises(config_lib.ConfigError) as e:
    parse(raw, tmp_path)
  assert message in str(e.value)
  assert str(e.value).startswith("test.yaml: ")
  assert not (tmp_path / "run").exists()


def test_cycle_is_reported_with_its_path(raw, tmp_path):
  raw["stages"]["quality"] = {"inputs": {"docs": "dedupe"}}
  with pytest.raises(config_lib.ConfigError, match="cycle: ") as e:
    parse(raw, tmp_path)
  cycle = str(e.value).split("cycle: ")[1].rstrip(".").split(" reads ")
  assert cycle[0] == cycle[-1] and {"quality", "pii", "toxicity", "dedupe"} <= set(cycle)


def test_selection_flags(raw, tmp_path):
  cfg = parse(raw, tmp_path)
  assert config_lib.select(cfg, until="tokenize")[-1] == "tokenize"
  assert config_lib.select(cfg, "dedupe", "train_tokenizer") == [
      "dedupe", "decontaminate", "train_tokenizer"]
  assert config_lib.select(cfg, only=["eval", "pii"]) == ["pii", "eval"]
  with pytest.raises(config_lib.ConfigError, match="--from=nope: not a stage"):
    config_lib.select(cfg, "nope")
  with pytest.raises(config_lib.ConfigError, match="comes after"):
    config_lib.select(cfg, "tokenize", "quality")


def test_missing_upstream_output_is_an_error_before_anything_runs(raw, tmp_path):
  cfg = parse(raw, tmp_path)
  with pytest.raises(runner.WorkflowError, match="reads the output of decontaminate, which has no finished"):
    runner.run(cfg, config_lib.select(cfg, only=["train_tokenizer"]))
  assert not os.path.exists(os.path.join(cfg.run_dir, "tokenizer"))
  assert not os.path.exists(runner.state_path(cfg.run_dir, "train_tokenizer"))


def test_locked_run_dir_is_refused_before_anything_runs(raw, tmp_path):
  cfg = parse(raw, tmp_path)
  # Another process (not this one) holds the lock, as a run in progress does.
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      sys.path.insert(0, {REPO_ROOT!r})
      from workflow import runner
      lock = runner.RunLock({cfg.run_dir!r}).acquire("other.yaml")
      print("locked", flush=True)
      time.sleep(60)
      """)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(runner.RunDirLocked, match=r"in use by another run in progress \(pid "
                       f"{holder.pid} .*other.yaml"):
      runner.run(cfg, list(cfg.order))
    assert not os.path.exists(os.path.join(cfg.run_dir, "extract"))
    assert not os.path.isdir(os.path.join(cfg.run_dir, runner.STATE_DIR, "stages"))
    assert runner.lock_holder(cfg.run_dir).startswith(f"pid {holder.pid} ")
  finally:
    holder.kill()
    holder.wait()
  assert runner.lock_holder(cfg.run_dir) is None  # The lock goes with its process.


def test_cli_reports_config_errors_with_exit_2(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("run_dir: /tmp/x\nstages: {extract: {}, sharpen: {}}\n")
  proc = subprocess.run([sys.executable, "-m", "workflow", "run", f"--config={bad}"],
                        cwd=REPO_ROOT, capture_output=True, text=True)
  assert proc.returncode == 2
  assert "unknown stage(s) ['sharpen']" in proc.stderr


def test_manifest_hashes_content_not_mtime(tmp_path):
  (tmp_path / "d" / "sub").mkdir(parents=True)
  (tmp_path / "d" / "a.txt").write_text("alpha")
  (tmp_path / "d" / "sub" / "b.txt").write_text("beta")
  before = fp.digest(fp.manifest(str(tmp_path / "d")))
  os.utime(tmp_path / "d" / "a.txt", (1, 1))
  assert fp.digest(fp.manifest(str(tmp_path / "d"))) == before
  (tmp_path / "d" / "a.txt").write_text("alphA")
  assert fp.digest(fp.manifest(str(tmp_path / "d"))) != before


def test_code_version_covers_imported_project_modules():
  quality = fp.module_closure("pipelines.quality")
  assert "pipelines/quality.py" in quality and "pipelines/common.py" in quality
  assert not any(f.startswith("workflow/") for f in quality)
  train = fp.code_files(stages_lib.BY_NAME["pretrain"], {"gin_files": ["gin/small_cpu.gin"]})
  # The gin file and what it includes are part of the training stage's code.
  assert {"gin/small_cpu.gin", "gin/models/small.gin", "gin/runs/pretrain.gin"} <= set(train)
  assert "model/transformer.py" in train
  toxicity = fp.code_files(stages_lib.BY_NAME["toxicity"])
  assert any(f.startswith("pipelines/toxicity_words/") for f in toxicity)


def test_config_section_changes_only_its_stage_hash(raw, tmp_path):
  a = parse(raw, tmp_path)
  changed = copy.deepcopy(raw)
  changed["stages"]["dedupe"]["jaccard_threshold"] = 0.5
  b = parse(changed, tmp_path)
  assert a.section_hash("dedupe") != b.section_hash("dedupe")
  assert all(a.section_hash(s) == b.section_hash(s) for s in a.order if s != "dedupe")
  changed["model"]["bindings"] = {"BATCH_SIZE": 4}
  c = parse(changed, tmp_path)
  assert c.section_hash("pretrain") != b.section_hash("pretrain")
  assert c.section_hash("eval") != b.section_hash("eval")
  assert c.section_hash("tokenize") == b.section_hash("tokenize")


def test_shard_layouts_are_the_pipelines_and_reach_the_stage_command(tmp_path):
  """The workflow's layout choices are pipelines.common's, and a stage's layout becomes its flag."""
  from pipelines import common
  assert stages_lib.SHARD_LAYOUTS == common.SHARD_LAYOUTS
  flags = stages_lib.option_flags({"shard_layout": "per_input"}, stages_lib.BY_NAME["tokenize"].options)
  assert flags == ["--shard_layout=per_input"]
  layered = {name for name, s in stages_lib.BY_NAME.items() if "shard_layout" in s.options}
  assert {"crawl", "extract", "quality", "pii", "toxicity", "dedupe", "decontaminate", "tokenize",
          "chat_data"} <= layered


def test_every_declared_option_is_a_flag_of_its_stage():
  """The option tables name real flags: each appears in the module's --help."""
  script = textwrap.dedent("""
      import contextlib, importlib, io, json, re, sys
      out = {}
      for name, module in json.loads(sys.argv[1]).items():
        mod = importlib.import_module(module)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
          try:
            (getattr(mod, "main", None) or mod.run)(["--help"])
          except SystemExit:
            pass
        out[name] = sorted(set(re.findall(r"--([a-z_]+)", buf.getvalue())))
      print(json.dumps(out))
      """)
  beam = {s.name: s.module for s in stages_lib.BY_NAME.values() if s.module.startswith("pipelines.")}
  proc = subprocess.run([sys.executable, "-c", script, __import__("json").dumps(beam)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  flags = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
  for name in beam:
    unknown = set(stages_lib.BY_NAME[name].options) - set(flags[name])
    assert not unknown, (name, unknown)
