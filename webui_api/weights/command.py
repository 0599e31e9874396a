"""`webui-api models list` / `webui-api models fetch NAME...`: the registry from the shell.

The subcommand takes the server's own flags too (--data-dir, --models-dir, the
--*-models-path folders, --offline, --models-mirror, --allow-unverified), so it fetches into
exactly the folders the server will read.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from webui_api.errors import ApiError
from webui_api.weights.fetcher import WeightsFetcher
from webui_api.weights.registry import WeightFile, WeightsRegistry


def build_subparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webui-api models", description="list or fetch A1111's pinned weight files")
    parser.add_argument("action", choices=("list", "fetch"))
    parser.add_argument("names", nargs="*", help="registry names to fetch (quote names with spaces)")
    parser.add_argument("--kind", help="fetch or list only this kind: upscaler, 'face restoration', interrogate, "
                        "taesd, 'vae approx', checkpoint")
    return parser


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def list_rows(fetcher: WeightsFetcher, kind: str | None = None) -> list[tuple[str, ...]]:
    """One row per registry entry: name, kind, file (folder/name), size, sha256?, licence, status."""
    rows: list[tuple[str, ...]] = []
    for entry in fetcher.registry:
        if kind and entry.kind != kind:
            continue
        status = "present" if fetcher.is_present(entry.name) else "missing"
        verified = "pinned" if entry.verified else "unknown"
        rows.append((entry.name, entry.kind, str(fetcher.target(entry.name)), human_size(entry.size), verified,
                     entry.licence, status))
    return rows


def format_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


@dataclass
class ProgressPrinter:
    """A one-line progress bar per file on a terminal; a line every few seconds otherwise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    interval: float = 2.0
    _last: float = -1e9

    def __call__(self, entry: WeightFile, done: int, total: int | None) -> None:
        now = self.clock()
        finished = total is not None and done >= total
        if not finished and now - self._last < (0.2 if self.stream.isatty() else self.interval):
            return
        self._last = now
        percent = f"{100 * done / total:5.1f}%" if total else "     "
        bar = ""
        if total:
            filled = int(30 * done / total)
            bar = "[" + "#" * filled + "." * (30 - filled) + "] "
        line = f"{entry.name}: {bar}{percent} {human_size(done)} / {human_size(total)}"
        if self.stream.isatty():
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run(argv: Sequence[str], settings: object, out: TextIO | None = None, err: TextIO | None = None,
        registry: WeightsRegistry | None = None) -> int:
    """The subcommand on already-parsed server settings; the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_subparser().parse_args(list(argv))
    fetcher = WeightsFetcher.from_settings(settings, registry, ProgressPrinter(err))
    if args.action == "list":
        header = ("name", "kind", "file", "size", "sha256", "licence", "status")
        out.write(format_table(list_rows(fetcher, args.kind), header) + "\n")
        return 0
    names = list(args.names) or ([e.name for e in fetcher.registry.of_kind(args.kind)] if args.kind else [])
    if not names:
        err.write("webui-api models fetch: name at least one file (see `webui-api models list`) or --kind KIND\n")
        return 2
    return _fetch(fetcher, names, out, err)


def _fetch(fetcher: WeightsFetcher, names: Sequence[str], out: TextIO, err: TextIO) -> int:
    failed = 0
    for name in names:
        try:
            already = fetcher.is_present(name)
            path = fetcher.ensure(name)
        except ApiError as exc:
            err.write(f"error: {exc.detail}\n")
            failed += 1
            continue
        out.write(f"{'present' if already else 'fetched'}: {fetcher.entry(name).name} -> {path}\n")
    return 1 if failed else 0
