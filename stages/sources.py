"""Stage sources: check and fingerprint the local files named in data.sources (always runs, takes a moment).

DVC cannot depend on a path that lives in params, so this stage writes each local source file's SHA-256
to a small JSON that prepare depends on: editing a local source reruns prepare; unchanged files give a
byte-identical JSON, so prepare does not rerun. Bad bytes or JSON stop here with the file and line.
"""

import argparse
from pathlib import Path

from longctx.io import atomic_write_json
from longctx.params import stage_check, stage_params
from longctx.sources import fingerprint_sources

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="fingerprint file to write (JSON)")
    args = ap.parse_args()
    p = stage_params()
    atomic_write_json(args.out, stage_check(fingerprint_sources, p.data))
