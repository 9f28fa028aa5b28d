"""The ``triaged`` command: run the daemon, check a config, manage dead letters.

Only :func:`main` turns errors into exit codes: admin problems go to stderr one per line
(``file:line:col: code message``) with exit 1 and no traceback; tracebacks are for bugs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from router import config as config_mod
from router import logs
from router.errors import TriagedError
from rules.source import ProblemsError

T = TypeVar("T")
DEFAULT_CONFIG = Path("config/triaged.yaml")

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=lambda: Path(os.environ.get("TRIAGED_CONFIG", DEFAULT_CONFIG)),
    show_default="$TRIAGED_CONFIG or config/triaged.yaml",
    help="Daemon config file.",
)


def _load(config_path: Path) -> tuple[config_mod.Config, Any]:
    from router.daemon import load_rules

    cfg = config_mod.load(config_path)
    return cfg, load_rules(cfg)


@click.group()
@click.version_option(package_name="triaged")
def cli() -> None:
    """triaged: every customer message, classified and in the right team's inbox."""


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Run the daemon until SIGTERM or Ctrl-C (SIGHUP reloads the rules)."""
    cfg = config_mod.load(config_path)
    if cfg.dispatcher.processes:  # before any metric exists: every process writes its own file
        from router.workers import prepare_metrics

        prepare_metrics(cfg.state_dir)
    from router.daemon import Daemon, load_rules

    ruleset = load_rules(cfg)
    logs.setup(cfg.log.level, fmt=cfg.log.format)
    for warning in ruleset.warnings:
        click.echo(warning.render(), err=True)

    async def serve() -> None:
        daemon = Daemon(cfg, ruleset)
        daemon.install_signal_handlers()
        await daemon.serve()

    asyncio.run(serve())


@cli.command(hidden=True)
@config_option
@click.option("--index", type=int, required=True, help="This worker's number.")
@click.option("--wake-fd", type=int, required=True, help="Its end of the daemon's socket pair.")
@click.option("--lock-fd", type=int, required=True, help="The daemon's state lock.")
def worker(config_path: Path, index: int, wake_fd: int, lock_fd: int) -> None:
    """One delivery process of ``triaged run`` (``dispatcher.processes``): started by the
    daemon with its two descriptors, never by hand."""
    from router.daemon import Daemon
    from router.workers import Seat

    for fd in (wake_fd, lock_fd):
        try:
            os.fstat(fd)
        except OSError:
            raise click.UsageError(
                f"descriptor {fd} is not open: `triaged worker` is started by `triaged run`"
            ) from None
    cfg, ruleset = _load(config_path)
    seat = Seat(index=index, wake_fd=wake_fd, lock_fd=lock_fd)
    logs.setup(cfg.log.level, fmt=cfg.log.format, process=seat.name)

    async def serve() -> None:
        daemon = Daemon(cfg, ruleset, seat=seat)
        daemon.install_signal_handlers()
        await daemon.serve()

    asyncio.run(serve())


@cli.command()
@config_option
def check(config_path: Path) -> None:
    """Validate the config and its rules file; exit 1 listing every problem."""
    cfg, ruleset = _load(config_path)
    for warning in ruleset.warnings:
        click.echo(warning.render(), err=True)
    click.echo(
        f"{config_path}: ok — {len(cfg.inputs)} inputs, {len(cfg.outputs)} outputs, "
        f"{len(ruleset.teams)} teams, {len(ruleset.rule_ids)} rules in {cfg.rules}"
    )


@cli.group("dead-letters")
def dead_letters() -> None:
    """List or replay messages that will not be retried on their own."""


def _with_queue(config_path: Path, action: Callable[[Any], Awaitable[T]]) -> T:
    from router.daemon import open_admin_queue

    cfg = config_mod.load(config_path)

    async def go() -> T:
        queue = await open_admin_queue(cfg)
        try:
            return await action(queue)
        finally:
            await queue.close()

    return asyncio.run(go())


@dead_letters.command("list")
@config_option
@click.option("--limit", default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_letters_list(config_path: Path, limit: int, as_json: bool) -> None:
    """Show dead letters, oldest first, with the reason they failed."""
    letters = _with_queue(config_path, lambda q: q.dead_letters(limit))
    for letter in letters:
        if as_json:
            record = {
                "id": letter.id,
                "failed_at": letter.failed_at.isoformat(),
                "attempts": letter.attempts,
                "reason": letter.reason,
                "message": json.loads(letter.message.to_json()),
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            m = letter.message
            click.echo(
                f"{letter.id}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  attempts={letter.attempts}  "
                f"{m.source}  {m.subject or m.text[:40]!r}\n    reason: {letter.reason}"
            )
    if not as_json:
        click.echo(f"{len(letters)} dead letters", err=True)


@dead_letters.command("replay")
@config_option
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dead_letters_replay(config_path: Path, ids: tuple[str, ...], replay_all: bool) -> None:
    """Put dead letters back on the queue with fresh attempts (targets already reached are
    not delivered again)."""
    if not ids and not replay_all:
        raise click.UsageError("give dead-letter ids, or --all")
    count = _with_queue(config_path, lambda q: q.replay(None if replay_all else list(ids)))
    click.echo(f"replayed {count} messages")


def _startup_errors(group: BaseExceptionGroup) -> list[str]:
    lines = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            lines += _startup_errors(exc)
        elif isinstance(exc, OSError | TriagedError | LookupError):
            lines.append(str(exc))
        else:
            raise exc
    return lines


def main() -> None:
    """Console entry point."""
    try:
        cli.main(standalone_mode=False)
    except ProblemsError as exc:
        errors = [p for p in exc.problems if p.severity == "error"]
        for problem in exc.problems:
            click.echo(problem.render(), err=True)
        click.echo(f"{len(errors)} errors — not loaded", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (OSError, TriagedError, LookupError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except BaseExceptionGroup as group:
        for line in _startup_errors(group):
            click.echo(f"error: {line}", err=True)
        sys.exit(1)


from router.rules_cmd import rules_group  # noqa: E402

cli.add_command(rules_group)
