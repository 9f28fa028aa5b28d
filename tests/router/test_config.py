"""Daemon config: defaults, paths, secrets, and every problem reported with its position."""

from __future__ import annotations

from pathlib import Path

import pytest

from router import config as config_mod
from router.errors import ConfigError
from router.secrets import SecretRef

REPO = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str) -> config_mod.Config:
    path = tmp_path / "triaged.yaml"
    path.write_text(text)
    return config_mod.load(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return [str(p).replace(str(tmp_path) + "/", "") for p in info.value.problems]


def test_example_config_loads_with_paths_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    cfg = config_mod.load(Path("config/triaged.yaml"))
    assert cfg.queue.type == "sqlite"
    assert cfg.state_dir == REPO / "state"
    assert cfg.rules == Path("config/rules.yaml")
    assert cfg.outputs["maildir"].path == REPO / "state" / "maildir"
    assert cfg.inputs["web"].anonymous is True


def test_state_directory_from_systemd_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "var"))
    cfg = load_text(tmp_path, "state_dir: elsewhere\n")
    assert cfg.state_dir == tmp_path / "var"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queue:\n  type: kafka\n", "triaged.yaml:2:9: E012 queue.type: Input should be"),
        ("dispatcher:\n  wrokers: 2\n", "triaged.yaml:2:3: E010 unknown key 'dispatcher.wrokers'"),
        (
            "queue:\n  lease: soon\n",
            "triaged.yaml:2:10: E012 queue.lease: Value error, 'soon' is not",
        ),
        (
            "inputs:\n  web:\n    type: webhok\n",
            'triaged.yaml:3:11: E021 unknown input type "webhok" (did you mean "webhook"?)',
        ),
        ("outputs:\n  box:\n    path: x\n", "triaged.yaml:3:5: E020 outputs.box: needs a 'type:'"),
        (
            "outputs:\n  box:\n    type: maildir\n    paht: x\n",
            "triaged.yaml:4:5: E010 unknown key 'outputs.box.paht'",
        ),
        ("queue:\n  type: redis\n", "triaged.yaml:2:3: E011 queue.type redis needs queue.url"),
        ("queue: {\n", "triaged.yaml:2:1: E001 invalid YAML"),
        ("log:\n  level: loud\n", "triaged.yaml:2:10: E012 log.level"),
    ],
)
def test_problems_have_positions(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "inputs:\n  a:\n    type: nope\n  b:\n    type: webhook\n    lisen: x\n"
        "outputs:\n  c:\n    type: maildir\n",
    )
    assert len(found) == 3, found


def test_secrets_are_never_inline(tmp_path: Path) -> None:
    text = (
        "inputs:\n  web:\n    type: webhook\n    sources:\n      shop:\n        secret: hunter2\n"
    )
    found = problems(tmp_path, text)
    assert any("secrets are not written in the config file" in p for p in found), found
    assert not any("hunter2" in p for p in found)


def test_secret_ref_reads_env_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP", "from-env")
    assert SecretRef(env="SHOP").resolve().get_secret_value() == "from-env"
    (tmp_path / "shop").write_text("from-cred\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert SecretRef(credential="shop").resolve().get_secret_value() == "from-cred"
    assert "from-cred" not in repr(SecretRef(credential="shop").resolve())
    with pytest.raises(LookupError, match="MISSING"):
        SecretRef(env="MISSING").resolve()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("4h", 14400), ("1d", 86400), (12, 12.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert config_mod.parse_duration(text) == seconds
