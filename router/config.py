"""The daemon config: one YAML file, validated whole, every problem reported with its position.

``load(path)`` returns a :class:`Config` or raises ``ConfigError`` listing every problem as
``file:line:col: code message``. Inputs and outputs are validated in a second phase against the
config model of their ``type:`` (``router.registry``), so each channel owns its schema.

Paths: ``rules`` is relative to the config file; ``state_dir`` to the working directory
(``$STATE_DIRECTORY``, set by systemd's ``StateDirectory=``, takes precedence); an output's
relative ``path`` to the state directory.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from router import registry
from router.errors import ConfigError
from router.secrets import SecretRef
from rules.source import Document, Problem, YamlFileError, load_yaml, plain

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: object) -> float:
    """``"30s"``, ``"5m"``, ``"4h"``, ``"1d"``, ``"250ms"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 4h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (expected a number and ms, s, m, h or d: 30s)")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_listen(value: str) -> tuple[str | None, int]:
    """Split ``host:port`` (``[::1]:8080`` for IPv6; an empty host means every interface)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen {value!r} must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen {value!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
    return host or None, int(port)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueConfig(_Strict):
    """Where messages wait between reception and delivery."""

    type: Literal["sqlite", "redis"] = "sqlite"
    url: str | SecretRef | None = Field(
        None, description="redis only: redis://host:port/db; a URL with a password as {env: …}"
    )
    prefix: str = Field("triaged:", description="redis only: key prefix shared by daemons")
    lease: Duration = Field(60.0, description="how long a taken message stays hidden")
    max_attempts: int = Field(8, ge=1, description="deliveries tried before dead-lettering")
    dedupe_window: Duration = Field(86400.0, description="how long an Idempotency-Key counts")


class RetryConfig(_Strict):
    """Exponential backoff between delivery attempts, with full jitter."""

    initial: Duration = 1.0
    max: Duration = 300.0
    factor: float = Field(2.0, ge=1.0)


class DispatcherConfig(_Strict):
    """The workers that take messages, apply the rules and deliver."""

    workers: int = Field(
        8, ge=0, le=256, description="concurrent batches (per process); 0: queue only"
    )
    processes: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "worker processes that deliver; 0: the daemon's own process delivers. With N, "
            "the daemon process only receives and N others take, decide and deliver"
        ),
    )
    batch: int = Field(
        16, ge=1, le=256, description="messages a worker takes at once; workers x batch in flight"
    )
    retry: RetryConfig = RetryConfig()
    stop_timeout: Duration = Field(20.0, description="how long to finish in-flight work on stop")


class AdminConfig(_Strict):
    """The operator's HTTP listener: /healthz, /metrics, POST /-/reload."""

    listen: str | None = Field("127.0.0.1:9108", description="host:port, or null to disable")
    token: SecretRef | None = Field(
        None, description="bearer token for POST /-/reload; without it the endpoint is off"
    )


class LogConfig(_Strict):
    """Log level and format (auto: console on a terminal, JSON otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class _RawConfig(_Strict):
    state_dir: Path = Path("state")
    rules: Path = Path("rules.yaml")
    rules_watch: Duration = Field(
        0.0, description="poll the rules file this often and reload on change; 0: off"
    )
    instance: str = Field(default_factory=socket.gethostname)
    queue: QueueConfig = QueueConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Config(_RawConfig):
    """The validated daemon config; ``inputs``/``outputs`` hold each channel's own model."""

    file: Path
    inputs: dict[str, Any] = Field(default_factory=dict)  # type: ignore[assignment]
    outputs: dict[str, Any] = Field(default_factory=dict)  # type: ignore[assignment]


def _problems(doc: Document, exc: ValidationError, prefix: tuple[str | int, ...]) -> list[Problem]:
    found = []
    for err in exc.errors():
        loc = tuple(part for part in err["loc"] if not str(part).startswith("function-"))
        path = prefix + loc
        where = ".".join(str(p) for p in path)
        if err["type"] == "extra_forbidden":
            found.append(doc.problem(path, "E010", f"unknown key {where!r}", at="key"))
        elif err["type"] == "missing":
            found.append(doc.problem(path[:-1], "E011", f"missing required key {where!r}"))
        else:
            found.append(doc.problem(path, "E012", f"{where}: {err['msg']}"))
    return found


def _component(
    doc: Document, kind: registry.Kind, name: str, raw: Any
) -> tuple[Any | None, list[Problem]]:
    section = f"{kind}s"
    path: tuple[str | int, ...] = (section, name)
    if not isinstance(raw, dict) or "type" not in raw:
        return None, [doc.problem(path, "E020", f"{section}.{name}: needs a 'type:'")]
    table = registry.table(kind)
    kind_name = raw["type"]
    if kind_name not in table:
        near = difflib.get_close_matches(str(kind_name), table, n=1)
        hint = f' (did you mean "{near[0]}"?)' if near else f" (known: {', '.join(sorted(table))})"
        return None, [
            doc.problem((*path, "type"), "E021", f'unknown {kind} type "{kind_name}"{hint}')
        ]
    model = registry.import_string(table[kind_name].config)
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, _problems(doc, exc, path)


def _resolve_paths(config: Config, state_dir: Path) -> Config:
    outputs = {}
    for name, out in config.outputs.items():
        path = getattr(out, "path", None)
        if isinstance(path, Path) and not path.is_absolute():
            out = out.model_copy(update={"path": state_dir / path})
        outputs[name] = out
    rules = config.rules if config.rules.is_absolute() else config.file.parent / config.rules
    return config.model_copy(update={"outputs": outputs, "state_dir": state_dir, "rules": rules})


def load(path: Path) -> Config:
    """Read and validate the config file at ``path``; raise ``ConfigError`` with every problem."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, 1, 1, "E000", f"cannot read: {exc.strerror}")]) from None
    try:
        doc = load_yaml(text, file)
    except YamlFileError as exc:
        raise ConfigError(exc.problems) from None
    data = plain(doc.data) if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), "E012", "the config must be a mapping of keys")])
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(doc, exc, ())) from None
    problems: list[Problem] = []
    sections: dict[str, dict[str, Any]] = {"input": {}, "output": {}}
    for kind, items in (("input", raw.inputs), ("output", raw.outputs)):
        for name, item in items.items():
            model, found = _component(doc, kind, name, item)  # type: ignore[arg-type]
            problems += found
            sections[kind][name] = model
    if problems:
        raise ConfigError(problems)
    config = Config(
        **raw.model_dump(exclude={"inputs", "outputs"}),
        file=path,
        inputs=sections["input"],
        outputs=sections["output"],
    )
    if config.queue.type == "redis" and config.queue.url is None:
        raise ConfigError([doc.problem(("queue",), "E011", "queue.type redis needs queue.url")])
    state_dir = Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0] or config.state_dir)
    return _resolve_paths(config, state_dir.absolute())
