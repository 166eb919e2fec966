"""Apache Beam jobs that turn WARC files into clean, filtered, deduplicated documents."""
