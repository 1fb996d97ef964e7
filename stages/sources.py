"""Stage sources: check and fingerprint the local files named in data.sources (always runs, takes a moment).

DVC cannot depend on a path that lives in params, so this stage writes each local source file's SHA-256
to a small JSON that prepare depends on: editing a local source reruns prepare; unchanged files give a
byte-identical JSON, so prepare does not rerun. Bad bytes or JSON stop here with the file and line.
"""

from longctx.cli import stage_args
from longctx.io import atomic_write_json
from longctx.params import stage_check, stage_params
from longctx.sources import fingerprint_sources

if __name__ == "__main__":
    args = stage_args(__doc__, {"out": "fingerprint file to write (JSON)"})
    p = stage_params()
    atomic_write_json(args.out, stage_check(fingerprint_sources, p.data))
