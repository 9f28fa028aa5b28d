"""MaildirSender on real files, read back with the stdlib ``mailbox`` module as mutt would."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import mailbox
import threading
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from channels.maildir import MaildirConfig, MaildirSender, file_name
from router.errors import PermanentFailure, TemporaryFailure
from router.interfaces import Delivery
from router.message import Message, Sender, Thread


def delivery(target: str = "team-maildir", team: str = "after-sales", **message: Any) -> Delivery:
    fields: dict[str, Any] = {
        "channel": "webhook",
        "source": "shop",
        "sender": Sender(address="wang@example.com", name="王小明"),
        "subject": "订单 A-1001 还没有发货",
        "text": "你好，\n我的订单还没有发货，请帮忙查一下。\n谢谢！",
        "fields": {"order_id": "A-1001", "items": [{"sku": "书", "qty": 2}]},
        "thread": Thread(conversation_id="chat-77"),
    }
    return Delivery(
        message=Message(**(fields | message)),
        team=team,
        target=target,
        category="shipping",
        priority="high",
        tags=("vip", "物流"),
        rules=("late-shipping", "vip-first"),
        attempt=1,
    )


@pytest.fixture
async def sender(tmp_path: Path) -> MaildirSender:
    sender = MaildirSender("team-maildir", MaildirConfig(type="maildir", path=tmp_path / "mail"))
    await sender.start()
    return sender


def read_all(root: Path, team: str = "after-sales") -> list[EmailMessage]:
    """Every mail in a team's Maildir, parsed with the modern email policy."""
    box = mailbox.Maildir(root / team, create=False)
    parsed = (
        email.message_from_bytes(box.get_bytes(key), policy=policy.default)
        for key in box.iterkeys()
    )
    return [mail for mail in parsed if isinstance(mail, EmailMessage)]


def files(root: Path, team: str = "after-sales") -> list[str]:
    return sorted(p.name for sub in ("new", "cur") for p in (root / team / sub).iterdir())


async def test_mail_is_readable_with_chinese_intact(sender: MaildirSender, tmp_path: Path) -> None:
    item = delivery()
    await sender.send(item)

    box = mailbox.Maildir(tmp_path / "mail" / "after-sales", create=False)
    [key] = box.keys()
    assert box.get_message(key).get_subdir() == "new"
    [mail] = read_all(tmp_path / "mail")
    assert mail["Subject"] == "订单 A-1001 还没有发货"
    assert mail["From"].addresses[0].display_name == "王小明"
    assert mail["From"].addresses[0].addr_spec == "wang@example.com"
    assert mail["Message-ID"] == f"<{file_name(item)}@triaged.invalid>"
    assert mail["Date"].datetime == item.message.received_at.replace(microsecond=0)
    assert mail["X-Triaged-Message-Id"] == item.message.id
    assert mail["X-Triaged-Team"] == "after-sales"
    assert mail["X-Triaged-Category"] == "shipping"
    assert mail["X-Triaged-Priority"] == "high"
    assert mail["X-Triaged-Tags"] == "vip, 物流"
    assert mail["X-Triaged-Rules"] == "late-shipping, vip-first"
    assert mail["X-Triaged-Source"] == "webhook/shop"
    body = mail.get_content()
    assert body.startswith("你好，\n我的订单还没有发货，请帮忙查一下。\n谢谢！\n")
    assert "order_id: A-1001" in body
    assert 'items: [{"sku": "书", "qty": 2}]' in body
    assert "conversation: chat-77" in body


async def test_raw_file_headers_are_ascii(sender: MaildirSender, tmp_path: Path) -> None:
    await sender.send(delivery())
    [name] = files(tmp_path / "mail")
    raw = (tmp_path / "mail" / "after-sales" / "new" / name).read_bytes()
    head = raw.split(b"\n\n", 1)[0]
    head.decode("ascii")  # RFC 2047 encoded: any mail reader can show it
    assert b"\r" not in raw  # Maildir files use the local line ending


@pytest.mark.parametrize(
    ("address", "name", "shown_name", "local_start"),
    [
        ("cust-42", "", "cust-42", "cust-42@webhook.invalid"),
        ("cust-42", "王小明", "王小明", "cust-42@webhook.invalid"),
        ("张三", "", "张三", "id-"),
        ("not an@address", "", "not an@address", "not_an_address-"),
    ],
)
async def test_from_placeholder_for_non_email_ids(
    sender: MaildirSender,
    tmp_path: Path,
    address: str,
    name: str,
    shown_name: str,
    local_start: str,
) -> None:
    await sender.send(delivery(sender=Sender(address=address, name=name)))
    [mail] = read_all(tmp_path / "mail")
    [sent_by] = mail["From"].addresses
    assert sent_by.display_name == shown_name
    assert sent_by.addr_spec.startswith(local_start)
    assert sent_by.addr_spec.endswith("@webhook.invalid")
    assert mail["X-Triaged-Sender"] == address


async def test_header_injection_is_stripped(sender: MaildirSender, tmp_path: Path) -> None:
    evil = "x@example.com\r\nBcc: victim@example.com"
    await sender.send(
        delivery(
            subject="Hello\r\nBcc: victim@example.com\nX-Evil: 1",
            sender=Sender(address=evil, name="Eve\r\nX-Evil: 2"),
        )
    )
    [mail] = read_all(tmp_path / "mail")
    assert mail["Bcc"] is None
    assert mail["X-Evil"] is None
    assert mail["Subject"] == "Hello Bcc: victim@example.com X-Evil: 1"
    assert "\n" not in mail["From"]
    assert "\n" not in mail["X-Triaged-Sender"]


async def test_subject_falls_back_to_first_line(sender: MaildirSender, tmp_path: Path) -> None:
    await sender.send(delivery(subject="", text="\n  第一行很重要  \n第二行"))
    [mail] = read_all(tmp_path / "mail")
    assert mail["Subject"] == "第一行很重要"


async def test_unencodable_characters_are_replaced(sender: MaildirSender, tmp_path: Path) -> None:
    await sender.send(delivery(subject="bad \ud800 subject", text="bad \udfff text"))
    [mail] = read_all(tmp_path / "mail")
    assert mail["Subject"] == "bad ? subject"
    assert mail.get_content().startswith("bad ? text\n")


async def test_same_key_twice_writes_once(sender: MaildirSender, tmp_path: Path) -> None:
    item = delivery()
    await sender.send(item)
    await sender.send(item)
    assert files(tmp_path / "mail") == [file_name(item)]


async def test_same_key_after_reader_moved_it_to_cur(sender: MaildirSender, tmp_path: Path) -> None:
    """Steps: deliver → a reader marks it seen (new/ → cur/<name>:2,S) → the same delivery is
    retried (as after a crash before the ack) → nothing new is written."""
    item = delivery()
    await sender.send(item)
    folder = tmp_path / "mail" / "after-sales"
    name = file_name(item)
    (folder / "new" / name).rename(folder / "cur" / f"{name}:2,S")
    await sender.send(dataclasses.replace(item, attempt=2))  # a retry is never a first attempt
    assert files(tmp_path / "mail") == [f"{name}:2,S"]
    assert list((folder / "tmp").iterdir()) == []


async def test_two_targets_two_files(sender: MaildirSender, tmp_path: Path) -> None:
    first = delivery(target="team-maildir")
    second = dataclasses.replace(first, target="archive-maildir")
    await sender.send(first)
    await sender.send(second)
    assert files(tmp_path / "mail") == sorted([file_name(first), file_name(second)])
    assert len(read_all(tmp_path / "mail")) == 2


async def test_teams_get_their_own_maildir(sender: MaildirSender, tmp_path: Path) -> None:
    await sender.send(delivery(team="after-sales"))
    await sender.send(delivery(team="售前"))
    for team in ("after-sales", "售前"):
        assert len(read_all(tmp_path / "mail", team)) == 1


async def test_leftover_tmp_file_does_not_block(sender: MaildirSender, tmp_path: Path) -> None:
    item = delivery()
    folder = tmp_path / "mail" / "after-sales"
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True)
    (folder / "tmp" / f"{file_name(item)}.1.dead").write_bytes(b"half a mail")  # a crash
    await sender.send(item)
    assert files(tmp_path / "mail") == [file_name(item)]


async def test_hand_made_folder_gets_missing_subdirs(sender: MaildirSender, tmp_path: Path) -> None:
    (tmp_path / "mail" / "after-sales" / "cur").mkdir(parents=True)
    await sender.send(delivery())
    assert len(read_all(tmp_path / "mail")) == 1


@pytest.mark.parametrize("team", ["", ".", "..", ".hidden", "a/b", "../escape"])
async def test_unusable_team_name_is_permanent(sender: MaildirSender, team: str) -> None:
    with pytest.raises(PermanentFailure, match="folder name"):
        await sender.send(delivery(team=team))


async def test_name_too_long_is_permanent(sender: MaildirSender) -> None:
    with pytest.raises(PermanentFailure, match="maildir write failed"):
        await sender.send(delivery(team="t" * 300))


async def test_disk_error_is_temporary(sender: MaildirSender, tmp_path: Path) -> None:
    """``new/`` is a file instead of a folder: an OSError an operator can fix."""
    folder = tmp_path / "mail" / "after-sales"
    for sub in ("tmp", "cur"):
        (folder / sub).mkdir(parents=True)
    (folder / "new").write_text("not a folder")
    with pytest.raises(TemporaryFailure, match="maildir write failed"):
        await sender.send(delivery())
    assert list((folder / "tmp").iterdir()) == []

    (folder / "new").unlink()  # the operator fixes it; the retry delivers
    await sender.send(delivery())
    assert len(read_all(tmp_path / "mail")) == 1


async def test_start_refuses_a_file_as_root(tmp_path: Path) -> None:
    (tmp_path / "mail").write_text("")
    sender = MaildirSender("m", MaildirConfig(type="maildir", path=tmp_path / "mail"))
    with pytest.raises(OSError):  # noqa: PT011 - FileExistsError or NotADirectoryError
        await sender.start()
    await sender.close()


def test_config_refuses_extra_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extra"):
        MaildirConfig.model_validate({"type": "maildir", "path": str(tmp_path), "mode": 600})


async def test_concurrent_sends_are_batched_and_each_written_once(
    sender: MaildirSender, tmp_path: Path
) -> None:
    """Many sends at one moment (a dispatcher batch) to two teams, some keys twice."""
    deliveries = [
        delivery(team=team, subject=f"退款 {i}") for i in range(40) for team in ("售后", "财务")
    ]
    await asyncio.gather(*(sender.send(d) for d in deliveries + deliveries[:10]))
    for team in ("售后", "财务"):
        assert len(files(tmp_path / "mail", team)) == 40
        assert sorted(
            mail["X-Triaged-Message-Id"] for mail in read_all(tmp_path / "mail", team)
        ) == sorted(d.message.id for d in deliveries if d.team == team)
        assert list((tmp_path / "mail" / team / "tmp").iterdir()) == []


async def test_a_failing_send_fails_alone_in_its_batch(
    sender: MaildirSender, tmp_path: Path
) -> None:
    good = [delivery(subject=f"好 {i}") for i in range(5)]
    results = await asyncio.gather(
        *(sender.send(d) for d in [*good[:2], delivery(team="t" * 300), *good[2:]]),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["NoneType"] * 2 + ["PermanentFailure"] + [
        "NoneType"
    ] * 3
    assert len(read_all(tmp_path / "mail")) == 5


@pytest.mark.parametrize(
    "subject",
    [
        "订单 A-1001 还没有发货，" * 9,  # many encoded-words, cut between 3-byte characters
        "Ünïcödé 😀 emoji 🎉 " * 6,  # 4-byte characters at word edges
        "退",
    ],
)
async def test_long_non_ascii_headers_round_trip_within_line_limits(
    sender: MaildirSender, tmp_path: Path, subject: str
) -> None:
    await sender.send(delivery(subject=subject, sender=Sender(address="a@b.cn", name="王" * 40)))
    [name] = files(tmp_path / "mail")
    raw = (tmp_path / "mail" / "after-sales" / "new" / name).read_bytes()
    head = raw.split(b"\n\n", 1)[0].decode("ascii")
    folded = [line for line in head.split("\n") if "=?utf-8?" in line and "From:" not in line]
    assert max(len(line) for line in folded) <= 78  # From: keeps its name one encoded-word
    [mail] = read_all(tmp_path / "mail")
    assert mail["Subject"] == subject.strip()
    assert mail["From"].addresses[0].display_name == "王" * 40


@pytest.mark.parametrize(
    ("address", "name", "subject"),
    [
        ("a" * 100_000, "", "x" * 5_000),  # an id of 100 k characters, no spaces anywhere
        ("cust@example.cn", "王" * 3_000, "退" * 3_000),
        ("x" * 300 + "@example.cn", "Wang " * 1_000, "refund " * 1_000),  # too long for email
    ],
)
async def test_huge_header_values_are_cut_within_line_limits(
    sender: MaildirSender, tmp_path: Path, address: str, name: str, subject: str
) -> None:
    """No header line passes RFC 5322's 998 octets, however long what the customer sent."""
    await sender.send(delivery(subject=subject, sender=Sender(address=address, name=name)))
    [file] = files(tmp_path / "mail")
    raw = (tmp_path / "mail" / "after-sales" / "new" / file).read_bytes()
    head = raw.split(b"\n\n", 1)[0]
    assert max(len(line) for line in head.split(b"\n")) <= 998
    [mail] = read_all(tmp_path / "mail")
    assert mail["Subject"].endswith("…")
    assert subject.startswith(mail["Subject"][:-1].strip())
    shown = mail["From"].addresses[0]
    assert shown.display_name.endswith("…")
    assert len(shown.addr_spec) <= 254


@pytest.mark.parametrize("sync", ["filesystem", "file"])
async def test_both_sync_modes_deliver_a_batch(tmp_path: Path, sync: str) -> None:
    config = MaildirConfig.model_validate({"type": "maildir", "path": tmp_path / "m", "sync": sync})
    sender = MaildirSender("m", config)
    await sender.start()
    items = [delivery(subject=f"退款 {i}") for i in range(20)]
    await asyncio.gather(*(sender.send(d) for d in items))
    await sender.close()
    assert sorted(m["X-Triaged-Message-Id"] for m in read_all(tmp_path / "m")) == sorted(
        d.message.id for d in items
    )
    assert list((tmp_path / "m" / "after-sales" / "tmp").iterdir()) == []


async def test_failed_sync_publishes_nothing_and_is_temporary(
    sender: MaildirSender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs failing (EIO from the disk): no mail may appear in new/, tmp/ is cleaned up,
    and the sends fail as temporary so the dispatcher retries them."""
    import errno

    import channels.maildir as maildir

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "syncfs: Input/output error")

    monkeypatch.setattr(maildir, "_syncfs", broken)
    items = [delivery(subject=f"退款 {i}") for i in range(3)]
    results = await asyncio.gather(*(sender.send(d) for d in items), return_exceptions=True)
    assert [type(r) for r in results] == [TemporaryFailure] * 3
    folder = tmp_path / "mail" / "after-sales"
    assert list((folder / "new").iterdir()) == list((folder / "tmp").iterdir()) == []

    monkeypatch.undo()  # the disk recovers: the retries deliver
    await asyncio.gather(*(sender.send(d) for d in items))
    assert len(read_all(tmp_path / "mail")) == 3


async def test_failed_sync_of_a_chunk_written_on_the_loop_publishes_nothing(
    sender: MaildirSender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with the team folder already there, so the chunk is written on the event loop
    and only its syncfs runs on a thread."""
    import errno

    import channels.maildir as maildir

    await sender.send(delivery(subject="first"))  # the folder exists from now on
    calls: list[int] = []

    def broken(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "syncfs: Input/output error")

    monkeypatch.setattr(maildir, "_syncfs", broken)
    items = [delivery(subject=f"退款 {i}") for i in range(3)]
    results = await asyncio.gather(*(sender.send(d) for d in items), return_exceptions=True)
    assert [type(r) for r in results] == [TemporaryFailure] * 3
    assert calls  # (one syncfs per chunk)
    folder = tmp_path / "mail" / "after-sales"
    assert len(list((folder / "new").iterdir())) == 1
    assert list((folder / "tmp").iterdir()) == []


async def test_close_waits_for_the_chunks_under_way(sender: MaildirSender, tmp_path: Path) -> None:
    await sender.send(delivery(subject="first"))
    items = [delivery(subject=f"退款 {i}") for i in range(40)]
    sends = [asyncio.create_task(sender.send(d)) for d in items]
    await asyncio.sleep(0)  # the sends park their mails
    await asyncio.sleep(0)  # the flush starts the chunks
    await sender.close()
    assert all(task.done() for task in sends)
    await asyncio.gather(*sends)
    assert len(read_all(tmp_path / "mail")) == 41


async def test_a_slow_chunk_on_the_loop_sends_the_next_ones_to_the_threads(
    sender: MaildirSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk so slow that writing a chunk stalls the loop: the following chunks are written
    by the threads for a while (each slow chunk logged), then the loop tries again. The
    warning is about the disk, not about the message whose send started the chunk."""
    import channels.maildir as maildir
    from router.logs import _MESSAGE, message_context

    await sender.send(delivery(subject="first"))  # the team folder exists from now on
    now = [1000.0]
    sender._clock = lambda: now[0]
    where: list[str] = []
    contexts: list[object] = []
    write = maildir._write_tmp

    def slow_write(path: str, data: bytes, *, fsync: bool) -> None:
        where.append(threading.current_thread().name)
        contexts.append(_MESSAGE.get())
        now[0] += 1.0  # this mail took the disk a second
        write(path, data, fsync=fsync)

    monkeypatch.setattr(maildir, "_write_tmp", slow_write)
    with structlog.testing.capture_logs() as logs:
        with message_context({"message_id": "the-sender-of-this-send"}):
            await sender.send(delivery(subject="slow"))  # on the loop, too slowly
        await sender.send(delivery(subject="next"))  # on a thread
        now[0] += maildir._SLOW_FOR_S
        await sender.send(delivery(subject="later"))  # on the loop again
    loop_thread = threading.current_thread().name
    assert where[0] == loop_thread
    assert where[1] != loop_thread
    assert where[2] == loop_thread
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["maildir.slow_disk"] * 2
    assert contexts[0] is None


async def test_new_team_maildir_appears_whole_even_when_two_writers_race(tmp_path: Path) -> None:
    """Two senders (two daemons on one disk) deliver the first mails of a new team at once:
    each builds the Maildir under a hidden name and renames it into place; the loser of the
    rename uses the winner's. One Maildir with cur/ new/ tmp/ (0700), nothing left behind."""
    root = tmp_path / "mail"
    senders = [MaildirSender(f"s{i}", MaildirConfig(type="maildir", path=root)) for i in range(2)]
    for sender in senders:
        await sender.start()
    items = [delivery(target=f"s{i % 2}", subject=f"新 {i}") for i in range(20)]
    await asyncio.gather(*(senders[i % 2].send(d) for i, d in enumerate(items)))
    for sender in senders:
        await sender.close()
    assert sorted(p.name for p in root.iterdir()) == ["after-sales"]
    folder = root / "after-sales"
    assert sorted(p.name for p in folder.iterdir()) == ["cur", "new", "tmp"]
    assert all((folder / sub).stat().st_mode & 0o777 == 0o700 for sub in ("cur", "new", "tmp"))
    assert len(read_all(root)) == 20
