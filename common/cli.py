"""``fedpcr`` command: dispatches to the sub-command modules (imported lazily, so ``--help`` is fast)."""

from __future__ import annotations

import importlib
import sys

#: sub-command -> (module, function, one-line help). Each function takes argv (list[str]) -> int.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("simulation.cohort_cli", "main", "write the embedded semi-synthetic multi-site DICOM cohort"),
    "prepare": ("common.preprocess.cli", "main", "DICOM tree + clinical table -> harmonised site cache"),
    "train": ("common.train_cli", "main", "pooled or single-site training -> model bundle"),
    "evaluate": ("common.evaluate_cli", "main", "evaluate a model bundle on a site cache -> clinical report"),
    "audit": ("common.audit_chain", "main", "verify a site's hash-chained audit log: fedpcr audit verify DIR"),
}


def usage() -> str:
    lines = ["usage: fedpcr <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'fedpcr <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fedpcr: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
