"""Maildir sender: each routed message becomes one mail file in its team's local Maildir.

Place in the flow: dispatcher → :meth:`MaildirSender.send` → ``<path>/<team>/new/<file>``,
read with ``mutt -f <path>/<team>``, Dovecot or Python's ``mailbox.Maildir``. Team folders
(``cur/ new/ tmp/``) are created on demand.

At most once per ``delivery.key``, also across a crash: the file name comes from the key
(:func:`file_name`: ``<message id>.<sha1(target)[:8]>.triaged``). If a file with that base
name is already in ``new/`` or ``cur/`` (where mail readers append ``:2,<flags>``), ``send``
writes nothing. Otherwise the mail is written to ``tmp/``, fsynced, renamed into ``new/``
(atomic) and ``new/`` is fsynced before ``send`` returns: after a crash there is either no
file or a whole one.

Batching: the sends waiting at one moment (a dispatcher worker delivers a batch of messages at
once) are written by a few thread jobs of up to ``_CHUNK`` mails each, with one ``new/`` fsync
per folder per job — one thread hop per job rather than one per mail.

Failure mapping (a choice): every ``OSError`` is a ``TemporaryFailure`` — a full disk
(ENOSPC, EDQUOT) and I/O errors (EIO), and also permissions and read-only mounts (EACCES,
EPERM, EROFS), since an operator fixes those and the message then arrives by itself; if
nobody does, the dispatcher's attempt limit dead-letters it, so nothing is lost.
``ENAMETOOLONG``, ``EINVAL`` and team names that cannot be a folder are ``PermanentFailure``:
retrying cannot help.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import hashlib
import json
import mailbox
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from email.header import Header
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from router.errors import DeliveryError, PermanentFailure, TemporaryFailure
from router.interfaces import Delivery
from router.message import Message

log = structlog.get_logger()

_PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL})
_SUBDIRS = ("tmp", "new", "cur")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")  # CR and LF above all: no header injection
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_NOT_LOCAL = re.compile(r"[^A-Za-z0-9_+-]+")
_SUBJECT_CHARS = 120
_THREADS = 16  # fsync waits are long, and many at once let the file system batch them
_CHUNK = 8  # most mails one thread job writes


class MaildirConfig(BaseModel):
    """Local Maildirs, one per team under ``path`` (``<path>/<team>/{cur,new,tmp}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["maildir"] = Field(description="Selects this sender.")
    path: Path = Field(description="Root directory; each team gets the Maildir <path>/<team>.")


def file_name(delivery: Delivery) -> str:
    """The Maildir base name of a delivery: stable per ``delivery.key``, no ``:`` or ``/``."""
    message_id = delivery.message.id
    if not _SAFE_ID.fullmatch(message_id):
        message_id = hashlib.sha1(message_id.encode()).hexdigest()[:26]
    return f"{message_id}.{hashlib.sha1(delivery.target.encode()).hexdigest()[:8]}.triaged"


def _encodable(value: str) -> str:
    """``value`` with what UTF-8 cannot encode (lone surrogates) replaced by ``?``."""
    return value.encode("utf-8", "replace").decode("utf-8")


def _header(value: str) -> str:
    """A header value with CR, LF and other control characters replaced by spaces."""
    return _CONTROL.sub(" ", _encodable(value)).strip()


def _from(message: Message) -> str:
    """The customer as From: their address if it is an email, else ``<id@<channel>.invalid>``.

    The display name is RFC 2047 encoded when it is not ASCII.
    """
    name, address = _header(message.sender.name), _header(message.sender.address)
    if not _EMAIL.fullmatch(address):
        local = _NOT_LOCAL.sub("_", address).strip("_")[:48]
        if local != address:  # keep distinct ids distinct once their odd characters are gone
            local = f"{local or 'id'}-{hashlib.sha1(address.encode()).hexdigest()[:8]}"
        name = name or address
        address = f"{local}@{message.channel}.invalid"
    return formataddr((name, address), charset="utf-8")


def _encoded(value: str) -> str:
    """An unstructured header value: as is when ASCII, else RFC 2047 encoded-words."""
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name="Subject").encode(linesep="\n")


def _subject(message: Message) -> str:
    subject = _header(message.subject)
    if not subject:
        lines = (_header(line) for line in message.text.splitlines())
        subject = next((line for line in lines if line), "")
        if len(subject) > _SUBJECT_CHARS:
            subject = subject[:_SUBJECT_CHARS] + "…"
    return subject or "(no subject)"


def _notes(delivery: Delivery) -> str:
    """The readable block after the text: routing and structured data (mutt hides X- headers)."""
    message = delivery.message
    lines = [
        "",
        "-- triaged --",
        f"team: {delivery.team}  category: {delivery.category}  priority: {delivery.priority}",
        f"tags: {', '.join(delivery.tags)}",
        f"rules: {', '.join(delivery.rules)}",
        f"message: {message.id}  ({message.channel} / {message.source})",
        f"from: {_header(message.sender.name)} <{_header(message.sender.address)}>",
    ]
    if message.recipients:
        lines.append(f"to: {_header(', '.join(message.recipients))}")
    if message.thread.conversation_id:
        lines.append(f"conversation: {_header(message.thread.conversation_id)}")
    if message.fields:
        lines.append("fields:")
        for key, value in message.fields.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"  {key}: {shown}")
    for attachment in message.attachments:
        lines.append(f"attachment: {attachment.name} ({attachment.type}, {attachment.size} bytes)")
    return "\n".join(lines) + "\n"


def build(delivery: Delivery) -> bytes:
    """The RFC 5322 mail for a delivery; non-ASCII headers are RFC 2047 encoded.

    Written with the email package's encoders rather than an ``EmailMessage`` under
    ``policy.default``, which re-parses and refolds every header: that cost 1.6 ms of CPU per
    mail, more than the rest of the pipeline together. Header values have every control
    character replaced (no header injection); the body is UTF-8, 8bit when every line fits
    RFC 5322's 998 octets, else base64.
    """
    message = delivery.message
    headers = [
        ("From", _from(message)),
        ("Subject", _encoded(_subject(message))),
        ("Date", format_datetime(message.received_at)),
        ("Message-ID", f"<{file_name(delivery)}@triaged.invalid>"),
        ("X-Triaged-Message-Id", _header(message.id)),
        ("X-Triaged-Team", _encoded(_header(delivery.team))),
        ("X-Triaged-Category", _encoded(_header(delivery.category))),
        ("X-Triaged-Priority", _encoded(_header(delivery.priority))),
        ("X-Triaged-Tags", _encoded(_header(", ".join(delivery.tags)))),
        ("X-Triaged-Rules", _encoded(_header(", ".join(delivery.rules)))),
        ("X-Triaged-Source", _encoded(_header(f"{message.channel}/{message.source}"))),
        ("X-Triaged-Sender", _encoded(_header(message.sender.address))),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
    ]
    text = message.text if message.text.endswith("\n") else message.text + "\n"
    body = _encodable(text + _notes(delivery)).replace("\r\n", "\n").encode("utf-8")
    if max(map(len, body.split(b"\n"))) <= 998:
        headers.append(("Content-Transfer-Encoding", "8bit"))
    else:
        headers.append(("Content-Transfer-Encoding", "base64"))
        body = base64.encodebytes(body)
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return head.encode("ascii") + b"\n" + body


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delivered(folder: Path, base: str) -> bool:
    """Whether ``new/`` or ``cur/`` holds ``base``, with or without a ``:2,flags`` suffix."""
    for sub in ("new", "cur"):
        with os.scandir(folder / sub) as entries:
            if any(entry.name.startswith(base) for entry in entries):
                return True
    return False


class _DirSync:
    """Coalesces directory fsyncs: a caller waits for one fsync that began after it arrived.

    Renames into ``new/`` become durable with an fsync of ``new/``; one fsync covers every
    rename done before it started, so concurrent deliveries share one instead of one each.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started: dict[Path, int] = {}
        self._done: dict[Path, int] = {}
        self._running: set[Path] = set()

    def sync(self, path: Path) -> None:
        """Return once an fsync of ``path`` that started after this call has completed."""
        with self._cond:
            needed = self._started.get(path, 0) + 1
            while self._done.get(path, 0) < needed:
                if path not in self._running:
                    self._running.add(path)
                    generation = self._started[path] = self._started.get(path, 0) + 1
                    break
                self._cond.wait()
            else:
                return
        try:
            _fsync_dir(path)
        finally:
            with self._cond:
                self._running.discard(path)
                self._done[path] = max(self._done.get(path, 0), generation)
                self._cond.notify_all()


def _write(folder: Path, base: str, data: bytes) -> None:
    """tmp/ → write, fsync → rename into new/ (the caller then fsyncs new/: Maildir protocol)."""
    tmp = folder / "tmp" / f"{base}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, folder / "new" / base)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_Pending = tuple[Path, Delivery, "asyncio.Future[bool]"]


def _resolve(
    chunk: list[_Pending], job: asyncio.Future[list[tuple[bool, bool | Exception]]]
) -> None:
    """On the loop: hand each waiting ``send`` its result."""
    if job.cancelled():
        error: BaseException | None = OSError(errno.ECANCELED, "maildir write cancelled")
    else:
        error = job.exception()
    results = [(False, error)] * len(chunk) if error is not None else job.result()
    for (_, _, future), (ok, value) in zip(chunk, results, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(bool(value))
        else:
            future.set_exception(value)


class MaildirSender:
    """Writes each delivery into ``<path>/<team>/`` as one mail, at most once per key."""

    def __init__(self, name: str, config: MaildirConfig) -> None:
        self.name = name
        self.config = config
        self._ready: set[str] = set()  # teams whose folder exists with cur/ new/ tmp/
        self._prepare_lock = threading.Lock()  # sends run in worker threads, maybe at once
        self._dir_sync = _DirSync()
        self._pending: list[_Pending] = []  # sends waiting for the next flush
        # Own threads: fsync waits are long, and many at once let the file system batch them.
        self._executor = ThreadPoolExecutor(
            max_workers=_THREADS, thread_name_prefix=f"maildir-{name}"
        )

    async def start(self) -> None:
        """Create the root directory if needed; raise ``OSError`` if it is not writable."""
        await asyncio.to_thread(self._check_root)

    async def send(self, delivery: Delivery) -> None:
        """Write the mail unless this delivery key is already in the team's Maildir.

        Raises ``TemporaryFailure`` on any disk error except those retrying cannot fix
        (``ENAMETOOLONG``, ``EINVAL``, a team name that is no folder name, a mail the email
        package refuses to build), which raise ``PermanentFailure``.
        """
        folder = self._folder(delivery.team)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((folder, delivery, future))
        if len(self._pending) == 1:  # the first of this moment schedules the flush
            loop.call_soon(self._flush, loop)
        try:
            written = await future
        except OSError as exc:
            self._ready.discard(delivery.team)  # re-create the folder next time if it vanished
            raise _failure(exc) from exc
        except ValueError as exc:  # the email package refused the message: same next time
            raise PermanentFailure(f"cannot build the mail: {exc}") from exc
        event = "delivery.written" if written else "delivery.already_present"
        log.debug(event, target=self.name, team=delivery.team)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand every waiting send to the threads: up to ``_CHUNK`` per job, all threads busy."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        size = max(1, min(_CHUNK, -(-len(pending) // _THREADS)))
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            try:
                job = loop.run_in_executor(self._executor, self._deliver_many, chunk)
            except RuntimeError as exc:  # closed: the executor takes no more jobs
                error = OSError(errno.ESHUTDOWN, f"maildir output {self.name!r} is closed")
                error.__cause__ = exc
                for _, _, future in chunk:
                    if not future.done():
                        future.set_exception(error)
                continue
            job.add_done_callback(functools.partial(_resolve, chunk))

    async def close(self) -> None:
        """Stop the writer threads (files are closed after each write). Idempotent."""
        self._executor.shutdown(wait=True)

    def _deliver_many(self, chunk: list[_Pending]) -> list[tuple[bool, bool | Exception]]:
        """In a worker thread: write each absent mail, then fsync each ``new/`` written to once."""
        results: list[tuple[bool, bool | Exception]] = []
        for folder, delivery, _ in chunk:
            try:
                results.append((True, self._deliver(folder, delivery)))
            except (OSError, ValueError) as exc:
                results.append((False, exc))
        written = [i for i, (ok, value) in enumerate(results) if ok and value]
        for folder in {chunk[i][0] for i in written}:
            try:
                self._dir_sync.sync(folder / "new")
            except OSError as exc:  # not durable: every mail written there fails (retried)
                for i in written:
                    if chunk[i][0] == folder:
                        results[i] = (False, exc)
        return results

    def _check_root(self) -> None:
        root = self.config.path
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"maildir output {self.name!r}: not writable", root)

    def _folder(self, team: str) -> Path:
        if not team or team.startswith(".") or "/" in team or "\x00" in team:
            raise PermanentFailure(f"team {team!r} cannot be a Maildir folder name")
        return self.config.path / team

    def _deliver(self, folder: Path, delivery: Delivery) -> bool:
        """In a worker thread: write the mail if absent; return whether it wrote."""
        if delivery.team not in self._ready:
            with self._prepare_lock:
                self._prepare(folder)
                self._ready.add(delivery.team)
        base = file_name(delivery)
        # A first attempt cannot have an earlier copy a reader moved to cur/: look in new/ only
        # (one stat). A retry — maybe after a crash between the write and the delivery log —
        # scans both folders, which costs time in proportion to the folder's size.
        if os.path.lexists(folder / "new" / base) or (
            delivery.attempt > 1 and _delivered(folder, base)
        ):
            return False
        _write(folder, base, build(delivery))
        return True

    def _prepare(self, folder: Path) -> None:
        created = not folder.exists()
        mailbox.Maildir(folder, create=True)  # the folder and cur/ new/ tmp/, mode 0700
        for sub in _SUBDIRS:  # a folder made by hand may lack some
            (folder / sub).mkdir(mode=0o700, exist_ok=True)
        if created:  # make the new directory entries durable before the first mail
            _fsync_dir(folder)
            _fsync_dir(folder.parent)


def _failure(exc: OSError) -> DeliveryError:
    reason = f"maildir write failed: {exc}"
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentFailure(reason)
    return TemporaryFailure(reason)
