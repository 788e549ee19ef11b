"""`python -m verification`: run every claim and print claim | paper ref | status | seconds.

Exits non-zero when any claim fails. `-x` stops at the first failure, `-k TEXT` runs the claims
whose title or reference contains TEXT, `--examples N` sets the hypothesis points per check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verification", description=__doc__.splitlines()[0])
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing claim")
    parser.add_argument(
        "-k", dest="keyword", default="", help="run only claims whose title or ref contains this"
    )
    parser.add_argument("--examples", type=int, default=None, help="hypothesis points per numerical check")
    args = parser.parse_args(argv)
    if args.examples is not None:
        if args.examples < 1:
            parser.error(f"--examples must be >= 1, got {args.examples}")
        os.environ["TRIGCORE_VERIFY_EXAMPLES"] = str(args.examples)

    import trigcore

    from . import claims  # noqa: F401  (registers the claims)
    from .proof import CLAIMS, ProofError

    selected = [c for c in CLAIMS if args.keyword.lower() in (c.title + " " + c.ref).lower()]
    if not selected:
        parser.error(f"no claim matches -k {args.keyword!r}")
    print(f"verifying trigcore at {os.path.dirname(trigcore.__file__)}")
    width = max(len(c.title) for c in selected)
    ref_width = max(len(c.ref) for c in selected)
    header = f"{'#':>2}  {'claim':<{width}}  {'paper':<{ref_width}}  status  seconds"
    print(header)
    print("-" * len(header))
    failures = []
    start = time.perf_counter()
    for c in selected:
        number = CLAIMS.index(c) + 1
        began = time.perf_counter()
        try:
            c.run()
            status = "proved"
        except Exception as err:  # a crash in the code under proof fails its claim too
            status, failures = "FAILED", [*failures, (c, err if isinstance(err, ProofError) else repr(err))]
        seconds = time.perf_counter() - began
        print(f"{number:>2}  {c.title:<{width}}  {c.ref:<{ref_width}}  {status:<6}  {seconds:7.1f}")
        sys.stdout.flush()
        if failures and args.exitfirst:
            break
    print("-" * len(header))
    for c, err in failures:
        print(f"FAILED {c.title} ({c.ref}):\n  {err}")
    total = time.perf_counter() - start
    print(
        f"{len(selected) - len(failures)} of {len(selected)} claims proved in {total:.0f} s"
        + ("" if not failures or not args.exitfirst else " (stopped at the first failure)")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
