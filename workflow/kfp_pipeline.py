"""Compiles a run config's DAG to a Kubeflow Pipelines v2 spec (Vertex AI Pipelines), or runs it
through kfp's local runner.

    .venv-kfp/bin/python -m workflow.kfp_pipeline --config=configs/sample.yaml \\
        --output=out/gemma_forge_pipeline.yaml                       # Vertex AI Pipelines spec
    .venv-kfp/bin/python -m workflow.kfp_pipeline --config=... --run_local --run_dir=/tmp/run

kfp pins requests differently from the project, so it lives in its own environment (.venv-kfp,
see docs/dependencies.md); this module imports only kfp, google-cloud-pipeline-components and the
project's stdlib-only ``workflow.config``/``stages``/``fingerprint``.

The pipeline has one task per stage of the config, with the same edges as the local run. Each
task's cache key is the stage's *static fingerprint*: the hash of its config section, its code
version, the content of its external inputs (WARC files, seed lists) and the cache keys of the
stages it reads, so a task is served from Vertex's cache exactly when the local workflow would
skip the stage (stage outputs are byte-identical for the same inputs and settings).

Targets:

* ``vertex``: Beam stages are container steps in the project's image that launch Dataflow jobs
  (the stage's own command with ``--runner=DataflowRunner`` and the ``kfp.dataflow`` settings);
  training, evaluation and inference stages are Vertex custom jobs on TPU
  (google-cloud-pipeline-components' ``create_custom_training_job_from_component`` with the
  ``kfp.tpu`` machine); the rest are plain container steps. Paths live under ``kfp.data_root``.
* ``local``: every task is a lightweight Python component that runs
  ``python -m workflow run --only=<stage>`` with the project's interpreter, so kfp's
  SubprocessRunner (no Docker, no network) runs the DAG in the local run dir.
"""


import argparse
import glob
import json
import os
import sys
from typing import Any, Mapping, Sequence

import yaml

from workflow import config as config_lib
from workflow import fingerprint as fp
from workflow import stages as stages_lib

PIPELINE_NAME = "gemma-forge"
DEFAULT_IMAGE = "us-docker.pkg.dev/PROJECT/gemma-forge/gemma-forge:latest"
DEFAULT_TPU = {"machine_type": "ct5lp-hightpu-4t", "accelerator_type": "", "accelerator_count": 1,
               "replica_count": 1}


def cache_keys(cfg: config_lib.RunConfig) -> dict[str, str]:
  """Each stage's static fingerprint (see the module docstring), in run order."""
  keys: dict[str, str] = {}
  for stage in cfg.order:
    spec = stages_lib.BY_NAME[stage]
    inputs = {}
    for slot, upstream in sorted(cfg.wiring[stage].items()):
      if config_lib.is_external(upstream):
        key = upstream[len(config_lib.EXTERNAL):]
        path = cfg.shared["inputs"][key]
        inputs[slot] = (fp.files_hash(glob.glob(path)) if key == "warcs"
                        else fp.digest(fp.manifest(path)))
      else:
        inputs[slot] = keys[upstream]
    for name, kind in sorted(spec.options.items()):
      if kind == "path" and name in cfg.options[stage]:
        inputs[f"option:{name}"] = fp.sha256_file(
            config_lib.resolve_path(cfg.options[stage][name]))
    keys[stage] = fp.digest({"stage": stage, "inputs": inputs,
                             "config": cfg.section_hash(stage),
                             "code": fp.code_version(spec, cfg.shared["model"])})
  return keys


def _remote_command(cfg: config_lib.RunConfig, stage: str) -> list[str]:
  """The stage's command in the project image, on ``kfp.data_root`` paths (Dataflow for Beam)."""
  spec = stages_lib.BY_NAME[stage]
  root = cfg.kfp.get("data_root", "gs://BUCKET/gemma-forge/run")
  run = dict(cfg.shared)
  # External inputs are copied to the bucket next to the run: <data_root>/inputs/<key>/.
  run["inputs"] = {k: f"{root}/inputs/{k}" + ("/*.warc.gz" if k == "warcs" else "")
                   for k in cfg.shared["inputs"]}
  if spec.kind == "beam":
    dataflow = cfg.kfp.get("dataflow") or {}
    run["beam_args"] = [
        "--runner=DataflowRunner", f"--project={cfg.kfp.get('project', 'PROJECT')}",
        f"--region={cfg.kfp.get('region', 'us-central1')}",
        f"--temp_location={dataflow.get('temp_location', root + '/tmp')}",
        f"--setup_file={dataflow.get('setup_file', '/app/pyproject.toml')}",
        f"--job_name=gemma-forge-{stage.replace('_', '-')}",
        *([f"--machine_type={dataflow['machine_type']}"] if "machine_type" in dataflow else []),
        *([f"--max_num_workers={dataflow['max_num_workers']}"]
          if "max_num_workers" in dataflow else []),
        *cfg.shared.get("beam_args", [])]
  inputs = {slot: (run["inputs"][up[len(config_lib.EXTERNAL):]] if config_lib.is_external(up)
                   else f"{root}/{stages_lib.BY_NAME[up].output}")
            for slot, up in cfg.wiring[stage].items()}
  ctx = stages_lib.StageContext(run_dir=root, options=cfg.options[stage], inputs=inputs,
                                output=f"{root}/{spec.output}", run=run, python="python")
  # Inside the image the repository is the working directory: repo paths become relative.
  return [arg.replace(stages_lib.REPO_ROOT + os.sep, "") for arg in spec.command(ctx)]


def build_pipeline(cfg: config_lib.RunConfig, target: str, python: str = sys.executable,
                   config_path: str | None = None):
  """The ``@dsl.pipeline`` function of the config's DAG for ``target`` ("vertex" or "local")."""
  from kfp import dsl  # noqa: PLC0415

  keys = cache_keys(cfg)
  image = cfg.kfp.get("image", DEFAULT_IMAGE)
  tpu = {**DEFAULT_TPU, **(cfg.kfp.get("tpu") or {})}

  if target == "local":
    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def run_stage(python: str, repo_root: str, config: str, run_dir: str, stage: str,
                  cache_key: str) -> str:
      """Runs one stage of the workflow (python -m workflow run --only=<stage>)."""
      import subprocess  # noqa: PLC0415
      subprocess.run([python, "-m", "workflow", "run", f"--config={config}",
                      f"--run_dir={run_dir}", f"--only={stage}"], cwd=repo_root, check=True)
      return cache_key

  def make_task(stage: str):
    spec = stages_lib.BY_NAME[stage]
    if target == "local":
      return run_stage(python=python, repo_root=stages_lib.REPO_ROOT,
                       config=os.path.abspath(config_path or cfg.path), run_dir=cfg.run_dir,
                       stage=stage, cache_key=keys[stage])
    command = _remote_command(cfg, stage)

    def body():
      return dsl.ContainerSpec(image=image, command=command[:1], args=command[1:])

    body.__name__ = f"gf_{stage}"
    body.__doc__ = spec.doc
    component = dsl.container_component(body)
    if spec.kind == "jax":
      from google_cloud_pipeline_components.v1.custom_job import (  # noqa: PLC0415
          create_custom_training_job_from_component)
      component = create_custom_training_job_from_component(
          component, display_name=f"gemma-forge-{stage}", machine_type=tpu["machine_type"],
          accelerator_type=tpu["accelerator_type"], accelerator_count=tpu["accelerator_count"],
          replica_count=tpu["replica_count"],
          service_account=cfg.kfp.get("service_account", ""),
          base_output_directory=f"{cfg.kfp.get('data_root', 'gs://BUCKET/gemma-forge/run')}/"
                                f"{spec.output}/vertex")
      return component(project=cfg.kfp.get("project", "PROJECT"),
                       location=cfg.kfp.get("region", "us-central1"))
    return component()

  @dsl.pipeline(name=PIPELINE_NAME, description="gemma-forge: WARC to an evaluated Gemma, "
                "one task per workflow stage.",
                pipeline_root=cfg.kfp.get("pipeline_root", ""))
  def pipeline():
    tasks = {}
    for stage in cfg.order:
      task = make_task(stage)
      task.set_display_name(stage)
      task.set_caching_options(enable_caching=True, cache_key=keys[stage])
      for upstream in cfg.upstream(stage):
        task.after(tasks[upstream])
      tasks[stage] = task

  return pipeline


def compile_spec(cfg: config_lib.RunConfig, output: str, target: str = "vertex") -> dict:
  """Compiles and validates the spec; returns it as a dict (the pipeline spec document)."""
  from google.protobuf import json_format  # noqa: PLC0415
  from kfp import compiler  # noqa: PLC0415
  from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: PLC0415

  os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
  compiler.Compiler().compile(build_pipeline(cfg, target), package_path=output)
  with open(output) as f:
    documents = [d for d in yaml.safe_load_all(f) if d]
  spec = documents[0]
  # Validation: the document parses as a PipelineSpec proto (unknown fields are errors) ...
  json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
  # ... and its DAG is the config's: one task per stage, the same edges and cache keys.
  check_dag(spec, cfg)
  return spec


def check_dag(spec: Mapping[str, Any], cfg: config_lib.RunConfig) -> None:
  tasks = spec["root"]["dag"]["tasks"]
  keys = cache_keys(cfg)
  names = {t["taskInfo"]["name"]: name for name, t in tasks.items()}
  if sorted(names) != sorted(cfg.order):
    raise ValueError(f"pipeline tasks {sorted(names)} are not the stages {list(cfg.order)}")
  for display, task_id in names.items():
    task = tasks[task_id]
    after = sorted(names_by_id(names)[d] for d in task.get("dependentTasks", []))
    if after != sorted(cfg.upstream(display)):
      raise ValueError(f"task {display} runs after {after}, the config says {cfg.upstream(display)}")
    caching = task.get("cachingOptions", {})
    if not caching.get("enableCache") or caching.get("cacheKey") != keys[display]:
      raise ValueError(f"task {display}: caching {caching} is not keyed by {keys[display]}")


def names_by_id(names: Mapping[str, str]) -> dict[str, str]:
  return {task_id: display for display, task_id in names.items()}


def run_local(cfg: config_lib.RunConfig, pipeline_root: str, python: str,
              config_path: str) -> None:
  """Runs the DAG through kfp's local SubprocessRunner in the current environment."""
  from kfp import local  # noqa: PLC0415

  local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
             raise_on_error=True)
  build_pipeline(cfg, "local", python=python, config_path=config_path)()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--run_dir", default=None, help="Overrides the config's run_dir.")
  parser.add_argument("--output", default=None, help="Write the compiled spec (YAML) here.")
  parser.add_argument("--target", default="vertex", choices=("vertex", "local"))
  parser.add_argument("--run_local", action="store_true",
                      help="Run the DAG with kfp's SubprocessRunner (the local target).")
  parser.add_argument("--python", default=os.path.join(stages_lib.REPO_ROOT, ".venv", "bin",
                                                       "python"),
                      help="The project's interpreter, which the local tasks run stages with.")
  parser.add_argument("--pipeline_root", default=None,
                      help="kfp's local pipeline root (default: <run_dir>/.kfp).")
  args = parser.parse_args(argv)
  try:
    cfg = config_lib.load(args.config, args.run_dir)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.output:
    spec = compile_spec(cfg, args.output, args.target)
    print(json.dumps({"output": args.output, "tasks": sorted(spec["root"]["dag"]["tasks"]),
                      "cache_keys": cache_keys(cfg)}, indent=1, sort_keys=True))
  if args.run_local:
    run_local(cfg, args.pipeline_root or os.path.join(cfg.run_dir, ".kfp"), args.python,
              args.config)
  return 0


if __name__ == "__main__":
  sys.exit(main())
