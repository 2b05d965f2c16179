"""``edgefill-operator`` / ``python -m edgefill_operator``: kopf in module mode.

Equivalent to ``kopf run -m edgefill_operator.main --all-namespaces`` with a
liveness endpoint and JSON logs; extra arguments go to ``kopf run`` (for
example ``--namespace=edge`` instead of all namespaces, or ``--standalone``).
"""

from __future__ import annotations

import os
import sys

from edgefill_operator import logs

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def kopf_args(argv: list[str]) -> list[str]:
    args = ["run", "-m", "edgefill_operator.main", "--log-format=json"]
    liveness = os.environ.get("EDGEFILL_OPERATOR_LIVENESS", DEFAULT_LIVENESS)
    if liveness and not any(a.startswith("--liveness") for a in argv):
        args.append(f"--liveness={liveness}")
    if not any(a.startswith(("--namespace", "-n", "--all-namespaces", "-A")) for a in argv):
        args.append("--all-namespaces")
    return args + argv


def main(argv: list[str] | None = None) -> int:
    from kopf.cli import main as kopf_main  # click command; imported late for fast --help

    logs.configure()
    try:
        kopf_main(
            args=kopf_args(list(sys.argv[1:] if argv is None else argv)), standalone_mode=True
        )
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
