"""A small WARC cut from the bundled sample with every kind of planted page (tests, benchmarks)."""

import json
import os

from warcio.archiveiterator import ArchiveIterator

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "sample")


def slice_sample(out_path: str, per_kind: int = 3) -> dict[str, int]:
  """Copies, as raw gzip members, the requests and responses of up to `per_kind` pages of every
  planted kind (and the originals of the duplicates taken) from the sample into one WARC; returns
  how many pages of each kind it took."""
  manifest = json.load(open(os.path.join(SAMPLE, "manifest.json")))
  wanted: dict[str, str] = {}
  for url, page in manifest["pages"].items():
    if sum(kind == page["kind"] for kind in wanted.values()) < per_kind:
      wanted[url] = page["kind"]
  for dup in manifest["duplicates"]:
    if dup["copy"] in wanted:
      wanted.setdefault(dup["original"], manifest["pages"][dup["original"]]["kind"])
  taken: dict[str, int] = {}
  with open(out_path, "wb") as out:
    for name in ("web.warc.gz", "docs.warc.gz"):
      with open(os.path.join(SAMPLE, name), "rb") as f:
        data = f.read()
        f.seek(0)
        it = ArchiveIterator(f)
        for record in it:
          url = record.rec_headers.get_header("WARC-Target-URI")
          offset = it.get_record_offset()
          it.read_to_end(record)
          if url in wanted:
            out.write(data[offset:offset + it.get_record_length()])
            if record.rec_type == "response":
              taken[wanted[url]] = taken.get(wanted[url], 0) + 1
  return taken
