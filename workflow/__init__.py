"""The orchestrated, resumable gemma-forge workflow: one command from WARC to an evaluated model.

    python -m workflow run --config=configs/sample.yaml [--from=S] [--until=S] [--only=S] [--dry_run]
    python -m workflow status --run_dir=out/demo

``workflow.config`` reads and checks the run config, ``workflow.stages`` is the stage table (one
declarative entry per stage), ``workflow.fingerprint`` hashes inputs, settings and code,
``workflow.runner`` plans and runs the DAG under a run-dir lock, ``workflow.progress`` shows it,
``workflow.status`` reads a run dir, ``workflow.report`` writes the run's HTML page and
``workflow.kfp_pipeline`` compiles the same DAG to a Kubeflow Pipelines v2 spec. See
docs/workflow.md.

Only the standard library and PyYAML are imported here and by ``config``/``stages``/
``fingerprint``, so the KFP compiler runs in its own small environment (.venv-kfp).
"""
