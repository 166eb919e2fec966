"""The Beam runners every job's output must be byte-identical under (issue 14): the default
DirectRunner again, its multi-process mode, and the portable runner in this process."""

OTHER_RUNNERS = {
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}
# A second default run too: reruns must be byte-identical as well.
RUNNERS = {"rerun": [], **OTHER_RUNNERS}
