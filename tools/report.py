"""Cross-experiment report (not a pipeline stage): docs/report/report.md + *_by_method.png.

    python tools/report.py                         # HEAD and the experiments derived from it
    python tools/report.py --all-commits           # every commit and its experiments
    python tools/report.py --rev main --rev my-branch --out docs/report
    python tools/report.py --summaries runs/*/      # folders with params.yaml + metrics/summary.json
    python tools/report.py --exp-json a.json b.json # saved `dvc exp show --json` outputs, joined
"""

import argparse
import json
from pathlib import Path

from longctx.report import METRICS_FILE, summaries_as_show, write_report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Compare DVC experiments: Markdown table + plots (reads `dvc exp show --json`).")
    p.add_argument("--out", default="docs/report", help="output folder (default: docs/report)")
    p.add_argument("--repo", default=".", help="DVC repository to read (default: .)")
    p.add_argument("--revs", "--rev", dest="revs", nargs="+", action="extend", default=[], metavar="REV",
                   help="commits/branches/tags (and their experiments); default HEAD")
    p.add_argument("-A", "--all-commits", action="store_true", help="every commit and its experiments")
    p.add_argument("-a", "--all-branches", action="store_true", help="every branch tip and its experiments")
    p.add_argument("-T", "--all-tags", action="store_true", help="every tag and its experiments")
    ws = p.add_mutually_exclusive_group()
    ws.add_argument("--workspace", dest="include_workspace", action="store_const", const=True, default=None,
                    help="always list the workspace (default: only when it differs from every other row)")
    ws.add_argument("--no-workspace", dest="include_workspace", action="store_const", const=False)
    p.add_argument("--metrics-file", default=METRICS_FILE)
    p.add_argument("--summaries", nargs="+", metavar="DIR", default=None,
                   help="experiment folders (params.yaml + metrics file each) instead of `dvc exp show`")
    p.add_argument("--exp-json", nargs="+", metavar="FILE", default=None,
                   help="saved `dvc exp show --json` outputs (e.g. from several GPU-host runs), joined")
    p.add_argument("--notes", metavar="FILE", default=None,
                   help="Markdown placed under the 'Reaching 2 x the native window' table (why methods miss it)")
    a = p.parse_args(argv)
    notes = Path(a.notes).read_text() if a.notes else None
    show, source = None, None
    if a.summaries:
        show, source = summaries_as_show(a.summaries, a.metrics_file), f"{len(a.summaries)} experiment folders"
    elif a.exp_json:
        show = [entry for f in a.exp_json for entry in json.loads(Path(f).read_text())]
        source = "dvc exp show --json saved in " + ", ".join(str(f) for f in a.exp_json)
    report = write_report(a.out, a.repo, a.revs, a.all_commits, a.all_branches, a.all_tags,
                          a.include_workspace, a.metrics_file, show=show, source=source, notes=notes)
    print(f"report: {report}")


if __name__ == "__main__":
    main()
