"""Maildir sender: each routed message becomes one mail file in its team's local Maildir.

Place in the flow: dispatcher → :meth:`MaildirSender.send` → ``<path>/<team>/new/<file>``,
read with ``mutt -f <path>/<team>``, Dovecot or Python's ``mailbox.Maildir``. Team folders
(``cur/ new/ tmp/``) are created on demand.

At most once per ``delivery.key``, also across a crash: the file name comes from the key
(:func:`file_name`: ``<message id>.<sha1(target)[:8]>.triaged``). If a file with that base
name is already in ``new/`` or ``cur/`` (where mail readers append ``:2,<flags>``), ``send``
writes nothing. Otherwise the mail is written to ``tmp/`` and made durable, renamed into
``new/`` (atomic) and ``new/`` is fsynced before ``send`` returns: after a crash there is
either no file or a whole one.

Batching: the sends waiting at one moment (a dispatcher worker delivers a batch of messages at
once) are written in jobs of up to ``_CHUNK`` mails. A job of first attempts to existing team
folders (the usual case) stats, builds, writes and renames its mails on the event loop and
hands only the two waits on the disk — the sync below and the ``fsync`` of ``new/`` — to a
thread, one hop each: a thread doing the per-mail system calls gave the GIL up and took it
back against the loop at each of them, which cost a third of the daemon's CPU. The price is
that the loop waits for those calls, tens of microseconds per mail, longer when ext4 is
committing its journal; a chunk that took the loop over 20 ms (a slow or saturated disk)
sends the next 30 s of chunks to the threads, logged as ``maildir.slow_disk``. Retries (which
may scan ``new/`` and ``cur/``), new team folders and ``sync: file`` go to a thread whole.
How the ``tmp/`` files of a job become durable before their renames is the output's ``sync``
setting:

* ``filesystem`` (the default, on Linux): every file of the job is written, then ONE
  ``syncfs(2)`` of the file system holding the team folders makes them all durable. On ext4
  here an ``fsync`` per mail cost ~230 µs of wall time and ~85 µs of CPU; one ``syncfs`` per
  job (of 16 mails, measured) cost ~15 µs per mail. The price: ``syncfs`` also flushes other
  programs' pending writes to that file system, so a Maildir on a file system with heavy
  unrelated writes should use ``file``. Where ``syncfs`` is missing, ``file`` is used.
* ``file``: ``fsync`` of each mail before its rename (the classic Maildir protocol).

Either way one ``fsync`` of ``new/`` per folder per job makes the renames durable.

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
import contextlib
import contextvars
import ctypes
import errno
import functools
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
# Header values are cut to this many characters ("…" marks the cut), so that no header line
# passes RFC 5322's 998 octets (Dovecot and mail readers may refuse or cut such a mail); the
# queue keeps the whole value. A display name is cut shorter: From keeps it one encoded-word,
# up to 4 UTF-8 bytes a character, before an address of up to 254.
_HEADER_CHARS = 400
_NAME_CHARS = 120
_ADDRESS_CHARS = 254  # RFC 5321's longest address; a longer "address" is an id
_WORD_BYTES = 42  # UTF-8 bytes per RFC 2047 encoded-word: 56 base64 characters
_THREADS = 2  # one job writes while the other waits for its sync; more only add GIL contention
_CHUNK = 64  # most mails one thread job writes
# Writing a chunk on the loop normally takes tens of microseconds per mail. When it takes more
# than this (a slow or saturated disk, a journal commit under way), the loop would stall
# ingest: chunks go to the threads for ``_SLOW_FOR_S`` before the loop tries again.
_SLOW_CHUNK_S = 0.02
_SLOW_FOR_S = 30.0


class MaildirConfig(BaseModel):
    """Local Maildirs, one per team under ``path`` (``<path>/<team>/{cur,new,tmp}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["maildir"] = Field(description="Selects this sender.")
    path: Path = Field(description="Root directory; each team gets the Maildir <path>/<team>.")
    sync: Literal["filesystem", "file"] = Field(
        default="filesystem",
        description=(
            "How written mails are made durable before they appear in new/: 'filesystem', "
            "one syncfs(2) per batch of mails (fast; also flushes other programs' writes to "
            "that file system), or 'file', one fsync(2) per mail."
        ),
    )


def file_name(delivery: Delivery) -> str:
    """The Maildir base name of a delivery: stable per ``delivery.key``, no ``:`` or ``/``."""
    message_id = delivery.message.id
    if not _SAFE_ID.fullmatch(message_id):
        message_id = hashlib.sha1(message_id.encode()).hexdigest()[:26]
    return f"{message_id}.{hashlib.sha1(delivery.target.encode()).hexdigest()[:8]}.triaged"


def _encodable(value: str) -> str:
    """``value`` with what UTF-8 cannot encode (lone surrogates) replaced by ``?``."""
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def _one_line(value: str) -> str:
    """``value`` with CR, LF and other control characters replaced by spaces, stripped."""
    if value.isprintable():  # no control character, no lone surrogate: nothing to replace
        return value.strip()
    return _CONTROL.sub(" ", _encodable(value)).strip()


def _clip(value: str, limit: int) -> str:
    """``value`` in at most ``limit`` characters, "…" where it was cut."""
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


def _header(value: str, limit: int = _HEADER_CHARS) -> str:
    """A header value: on one line (``_one_line``), cut to ``limit`` characters."""
    return _clip(_one_line(value), limit)


def _from(message: Message) -> str:
    """The customer as From: their address if it is an email, else ``<id@<channel>.invalid>``.

    The display name is RFC 2047 encoded when it is not ASCII.
    """
    name, address = _header(message.sender.name, _NAME_CHARS), _one_line(message.sender.address)
    if len(address) > _ADDRESS_CHARS or not _EMAIL.fullmatch(address):
        local = _NOT_LOCAL.sub("_", address).strip("_")[:48]
        if local != address:  # keep distinct ids distinct once their odd characters are gone
            local = f"{local or 'id'}-{hashlib.sha1(address.encode()).hexdigest()[:8]}"
        name = name or _clip(address, _NAME_CHARS)
        address = f"{local}@{message.channel}.invalid"
    if name.isascii():
        return formataddr((name, address))  # quotes the display name where RFC 5322 needs it
    # One encoded-word, however long: Python's address parser (unlike mutt's) puts a space
    # between adjacent encoded-words in a display name, so splitting would change the name.
    word = base64.b64encode(name.encode("utf-8")).decode("ascii")
    return f"=?utf-8?b?{word}?= <{address}>"


def _encoded(value: str) -> str:
    """A header value: as is when ASCII, else RFC 2047 "B" encoded-words, folded.

    Each word holds at most ``_WORD_BYTES`` of UTF-8, cut between characters, so a word is
    68 characters and ``Subject: <word>`` fits 78 (RFC 2047 §2 allows 75 per word; readers
    join adjacent words, ignoring the folding white space between them, §6.2). The email
    package's ``Header`` does the same but measured 0.2 ms per header here (it re-measures
    the encoded length per character), a third of the whole mail's cost.
    """
    if value.isascii():
        return value
    data, words, start = value.encode("utf-8"), [], 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a character
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return "\n ".join(words)


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
        f"from: {_one_line(message.sender.name)} <{_one_line(message.sender.address)}>",
    ]
    if message.recipients:
        lines.append(f"to: {_one_line(', '.join(message.recipients))}")
    if message.thread.conversation_id:
        lines.append(f"conversation: {_one_line(message.thread.conversation_id)}")
    if message.fields:
        lines.append("fields:")
        for key, value in message.fields.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"  {key}: {shown}")
    for attachment in message.attachments:
        lines.append(f"attachment: {attachment.name} ({attachment.type}, {attachment.size} bytes)")
    return "\n".join(lines) + "\n"


def build(delivery: Delivery, name: str | None = None) -> bytes:
    """The RFC 5322 mail for a delivery; non-ASCII headers are RFC 2047 encoded.

    Written with the email package's encoders rather than an ``EmailMessage`` under
    ``policy.default``, which re-parses and refolds every header: that cost 1.6 ms of CPU per
    mail, more than the rest of the pipeline together. Header values have every control
    character replaced (no header injection); the body is UTF-8, 8bit when every line fits
    RFC 5322's 998 octets, else base64. ``name``: the delivery's ``file_name`` when the caller
    has it already (the Message-ID is made from it).
    """
    message = delivery.message
    headers = [
        ("From", _from(message)),
        ("Subject", _encoded(_subject(message))),
        ("Date", format_datetime(message.received_at)),
        ("Message-ID", f"<{name or file_name(delivery)}@triaged.invalid>"),
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
    body = (text + _notes(delivery)).replace("\r\n", "\n").encode("utf-8", "replace")
    if max(map(len, body.split(b"\n"))) <= 998:
        headers.append(("Content-Transfer-Encoding", "8bit"))
    else:
        headers.append(("Content-Transfer-Encoding", "base64"))
        body = base64.encodebytes(body)
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return head.encode("ascii") + b"\n" + body


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delivered(folder: str, base: str) -> bool:
    """Whether ``new/`` or ``cur/`` holds ``base``, with or without a ``:2,flags`` suffix."""
    for sub in ("new", "cur"):
        with os.scandir(f"{folder}/{sub}") as entries:
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
        self._started: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._running: set[str] = set()

    def sync(self, path: str) -> None:
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


def _write_tmp(path: str, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to the new file ``path`` in ``tmp/`` (fsynced when asked)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink(path)
        raise


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _load_syncfs() -> Callable[[int], None] | None:
    """``syncfs(2)`` through libc, or None where there is none (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int,)

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    return syncfs


_syncfs = _load_syncfs()


def _sync_filesystems(folders: Iterable[str]) -> None:
    """One ``syncfs`` per file system holding ``folders``: their written files are durable."""
    assert _syncfs is not None
    devices: set[int] = set()
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            device = os.fstat(fd).st_dev
            if device not in devices:
                devices.add(device)
                _syncfs(fd)
        finally:
            os.close(fd)


_Pending = tuple[str, Delivery, "asyncio.Future[bool]"]
_Result = tuple[bool, bool | Exception]  # (True, written) or (False, the error)
_Staged = tuple[int, str, str]  # (index in the chunk, tmp file, final name in new/)


def _resolve(chunk: list[_Pending], results: list[_Result] | BaseException) -> None:
    """On the loop: hand each waiting ``send`` its result (or the error of the whole job)."""
    if isinstance(results, BaseException):
        results = [(False, results)] * len(chunk)  # type: ignore[list-item]
    for (_, _, future), (ok, value) in zip(chunk, results, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(bool(value))
        else:
            future.set_exception(value)


def _resolve_job(chunk: list[_Pending], job: asyncio.Future[list[_Result]]) -> None:
    """Done callback of a thread job: ``_resolve`` with its outcome."""
    if job.cancelled():
        _resolve(chunk, OSError(errno.ECANCELED, "maildir write cancelled"))
    else:
        _resolve(chunk, job.exception() or job.result())


class MaildirSender:
    """Writes each delivery into ``<path>/<team>/`` as one mail, at most once per key."""

    owns_loop = False  # True in a worker process: no ingest to keep the loop free for

    def __init__(self, name: str, config: MaildirConfig) -> None:
        self.name = name
        self.config = config
        self._ready: set[str] = set()  # teams whose folder exists with cur/ new/ tmp/
        self._prepare_lock = threading.Lock()  # sends run in worker threads, maybe at once
        self._dir_sync = _DirSync()
        self._folders: dict[str, str] = {}  # team → its Maildir's path
        self._per_file = config.sync == "file" or _syncfs is None
        self._pending: list[_Pending] = []  # sends waiting for the next flush
        self._jobs: set[asyncio.Task[None]] = set()  # chunks written on the loop, syncing
        # tmp/ names: <base>.<pid>.<random tag>.<n>; O_EXCL refuses any clash (then retried)
        self._tmp_tag = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._tmp_count = itertools.count()
        self._clock = time.monotonic
        self._threads_until = 0.0  # the loop wrote a chunk too slowly: threads until then
        # Own threads (see ``_THREADS``), apart from the loop's default executor.
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
        """Start a job for every waiting send: up to ``_CHUNK`` mails each.

        A chunk of first attempts to existing team folders, with ``sync: filesystem``, is
        written on the loop and only its syncs go to a thread (``_deliver_on_loop``); any
        other chunk goes to a thread whole (``_deliver_many``), and so does every chunk for
        ``_SLOW_FOR_S`` after one took the loop more than ``_SLOW_CHUNK_S`` to write — unless
        the loop is ours alone (``owns_loop``, a worker process): a thread job's GIL handoffs
        cost more CPU than the wait, and nothing else needs the loop meanwhile.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        size = max(1, min(_CHUNK, -(-len(pending) // _THREADS)))
        on_loop = not self._per_file and (self.owns_loop or self._clock() >= self._threads_until)
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            if not on_loop or not all(
                d.attempt == 1 and d.team in self._ready for _, d, _ in chunk
            ):
                try:
                    job = loop.run_in_executor(self._executor, self._deliver_many, chunk)
                except RuntimeError as exc:  # closed: the executor takes no more jobs
                    _resolve(chunk, self._closed_error(exc))
                    continue
                job.add_done_callback(functools.partial(_resolve_job, chunk))
            else:
                # an empty context: the chunk's log lines are about no one message (the flush
                # runs in the context of the send that scheduled it)
                task = loop.create_task(self._deliver_on_loop(chunk), context=contextvars.Context())
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)

    def _closed_error(self, cause: BaseException) -> OSError:
        error = OSError(errno.ESHUTDOWN, f"maildir output {self.name!r} is closed")
        error.__cause__ = cause
        return error

    async def close(self) -> None:
        """Finish the jobs under way, stop the threads (files are closed after each write).

        Idempotent.
        """
        if self._jobs:
            await asyncio.wait(list(self._jobs))
        self._executor.shutdown(wait=True)

    async def _deliver_on_loop(self, chunk: list[_Pending]) -> None:
        """``_deliver_many`` without its thread for the per-mail work.

        A thread job pays for the GIL at every system call: a job of 64 mails made some 40
        futex calls per mail, a third of the daemon's CPU, contending with the loop. Here the
        loop stats, builds and writes each mail to ``tmp/`` (tens of microseconds each, into
        the page cache) and renames them; a thread does only what waits for the disk — the
        ``syncfs`` and the ``fsync`` of ``new/`` — one hop each per chunk. The loop's share is
        timed (``_slow``).
        """
        loop, clock = asyncio.get_running_loop(), self._clock
        results: list[_Result] = [(True, False)] * len(chunk)
        try:
            started = clock()
            staged = self._stage(chunk, results)
            spent = clock() - started
            if staged:
                await loop.run_in_executor(
                    self._executor, self._make_durable, chunk, staged, results
                )
                started = clock()
                renamed = self._publish(staged, results)
                spent += clock() - started
                if renamed:
                    await loop.run_in_executor(
                        self._executor, self._sync_dirs, renamed, staged, results
                    )
            self._slow(spent, len(chunk))
        except RuntimeError as exc:  # closed meanwhile: the executor takes no more jobs
            _resolve(chunk, self._closed_error(exc))
        except Exception as exc:  # not durable as far as we know: every send fails with it
            _resolve(chunk, exc)
        except asyncio.CancelledError:  # the loop is going down: nobody waits any more
            _resolve(chunk, OSError(errno.ECANCELED, "maildir write cancelled"))
            raise
        else:
            _resolve(chunk, results)

    def _slow(self, spent: float, mails: int) -> None:
        """After a chunk held the loop ``spent`` seconds: past ``_SLOW_CHUNK_S``, chunks go
        to the threads for ``_SLOW_FOR_S``."""
        if spent > _SLOW_CHUNK_S and not self.owns_loop:
            self._threads_until = self._clock() + _SLOW_FOR_S
            log.warning(
                "maildir.slow_disk",
                target=self.name,
                mails=mails,
                ms=round(spent * 1000, 1),
                threads_for_s=_SLOW_FOR_S,
            )

    def _deliver_many(self, chunk: list[_Pending]) -> list[_Result]:
        """In a worker thread: write each absent mail to ``tmp/``, make them durable, rename
        them into ``new/``, then fsync each ``new/`` renamed into, once."""
        results: list[_Result] = [(True, False)] * len(chunk)
        staged = self._stage(chunk, results)
        if staged:
            self._make_durable(chunk, staged, results)
            self._sync_dirs(self._publish(staged, results), staged, results)
        return results

    def _stage(self, chunk: list[_Pending], results: list[_Result]) -> list[_Staged]:
        """Write each mail not yet delivered to ``tmp/`` (fsynced with ``sync: file``)."""
        per_file, tag, count = self._per_file, self._tmp_tag, self._tmp_count
        staged: list[_Staged] = []
        for i, (folder, delivery, _) in enumerate(chunk):
            try:
                base = self._absent(folder, delivery)
                if base is not None:
                    tmp = f"{folder}/tmp/{base}.{tag}.{next(count)}"
                    _write_tmp(tmp, build(delivery, base), fsync=per_file)
                    staged.append((i, tmp, f"{folder}/new/{base}"))
            except (OSError, ValueError) as exc:
                results[i] = (False, exc)
        return staged

    def _make_durable(
        self, chunk: list[_Pending], staged: list[_Staged], results: list[_Result]
    ) -> None:
        """With ``sync: filesystem``, one ``syncfs`` for the ``tmp/`` files of ``staged``; if
        it fails none of them may appear in ``new/``: they are removed and ``staged`` emptied
        (their sends fail and are retried)."""
        if self._per_file:
            return
        try:
            _sync_filesystems({chunk[i][0] for i, _, _ in staged})
        except OSError as exc:
            for i, tmp, _ in staged:
                _unlink(tmp)
                results[i] = (False, exc)
            staged.clear()

    def _publish(self, staged: list[_Staged], results: list[_Result]) -> set[str]:
        """Rename each durable ``tmp/`` file into ``new/``; the ``new/`` folders renamed into."""
        renamed: set[str] = set()
        for i, tmp, final in staged:
            try:
                os.rename(tmp, final)
            except OSError as exc:
                _unlink(tmp)
                results[i] = (False, exc)
                continue
            results[i] = (True, True)
            renamed.add(os.path.dirname(final))
        return renamed

    def _sync_dirs(self, renamed: set[str], staged: list[_Staged], results: list[_Result]) -> None:
        """One ``fsync`` of each ``new/`` in ``renamed`` (shared with concurrent jobs); if it
        fails, every mail renamed there fails (retried: the retry finds it delivered)."""
        for new in renamed:
            try:
                self._dir_sync.sync(new)
            except OSError as exc:
                for i, _, final in staged:
                    if os.path.dirname(final) == new:
                        results[i] = (False, exc)

    def _check_root(self) -> None:
        root = self.config.path
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"maildir output {self.name!r}: not writable", root)

    def _folder(self, team: str) -> str:
        folder = self._folders.get(team)
        if folder is None:
            if not team or team.startswith(".") or "/" in team or "\x00" in team:
                raise PermanentFailure(f"team {team!r} cannot be a Maildir folder name")
            if len(self._folders) > 4096:  # team names come from the rules: a few dozen
                self._folders.clear()
            folder = self._folders[team] = os.path.join(self.config.path, team)
        return folder

    def _absent(self, folder: str, delivery: Delivery) -> str | None:
        """The mail's base name if it is not delivered yet, else None (on the loop or in a
        writer thread; only a thread job creates a team's folder)."""
        if delivery.team not in self._ready:
            with self._prepare_lock:
                self._prepare(folder)
                self._ready.add(delivery.team)
        base = file_name(delivery)
        # A first attempt cannot have an earlier copy a reader moved to cur/: look in new/ only
        # (one stat). A retry — maybe after a crash between the write and the delivery log —
        # scans both folders, which costs time in proportion to the folder's size.
        if os.path.lexists(f"{folder}/new/{base}") or (
            delivery.attempt > 1 and _delivered(folder, base)
        ):
            return None
        return base

    def _prepare(self, name: str) -> None:
        """Make sure the team's Maildir exists with ``cur/ new/ tmp/``.

        A new one is built under a hidden name and renamed into place, so a reader (mutt, a
        script listing the folders) sees either no Maildir or a whole one, never a folder
        whose ``cur/`` is not there yet.
        """
        folder = Path(name)
        if not folder.exists():
            staging = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}")
            staging.mkdir(mode=0o700)
            try:
                for sub in _SUBDIRS:
                    (staging / sub).mkdir(mode=0o700)
                _fsync_dir(staging)
                os.rename(staging, folder)  # fails if another writer made it meanwhile: fine
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                if not folder.is_dir():
                    raise
            else:  # make the new entry durable before the first mail
                _fsync_dir(folder.parent)
        for sub in _SUBDIRS:  # a folder made by hand may lack some
            (folder / sub).mkdir(mode=0o700, exist_ok=True)


def _failure(exc: OSError) -> DeliveryError:
    reason = f"maildir write failed: {exc}"
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentFailure(reason)
    return TemporaryFailure(reason)
