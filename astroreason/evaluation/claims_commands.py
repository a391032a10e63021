"""`astroreason claims DRAFT SOURCE...`: check every number of a draft against the runs it reports
(`evaluation.claims`)."""

from __future__ import annotations

import json


def run_claims(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .claims import check_claims

    findings, ok, counts = check_claims(args.draft, args.sources)
    for finding in sorted(findings + (ok if args.verbose else []), key=lambda f: (f.line, f.kind != "ok")):
        print(finding)
    print("CLAIMS " + json.dumps(counts))
    return 1 if findings else 0


def add_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "claims",
        help="Check every result a draft (.tex or .md) quotes against evaluation runs or a report's values.json.",
    )
    c.add_argument(
        "draft", help="The draft: a .tex or .md file (macros \\ImageAccuracy or {{ImageAccuracy}} expanded)."
    )
    c.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="Evaluation run directories (result.json) and report directories (values.json).",
    )
    c.add_argument("--verbose", action="store_true", help="Print the numbers that matched too (`ok` lines).")
    c.set_defaults(func=run_claims)
