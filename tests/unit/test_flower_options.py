"""Flower's options from Settings, FLOWER_BASIC_AUTH parsing, and `framepool up`'s Flower line."""

from __future__ import annotations

from typing import Any

import pytest

from framepool.errors import BadInput
from framepool.flower import flower_argv, generate_basic_auth, parse_basic_auth, users
from framepool.settings import Settings
from framepool.stack import Stack


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)


def test_parse_basic_auth_pairs_and_colons_in_passwords() -> None:
    assert parse_basic_auth("ops:a:b, viewer:pw2") == [("ops", "a:b"), ("viewer", "pw2")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("admin", "entry 1 has no ':'"),
        ("a:secret-pw,", "entry 2 has no ':'"),
        (":secret-pw", "entry 1 has an empty user or password"),
        ("a:secret-pw,b:", "entry 2 has an empty user or password"),
        ("a :secret-pw", "entry 1: the user name has spaces"),
    ],
)
def test_parse_basic_auth_refuses_malformed_without_echoing_passwords(
    value: str, message: str
) -> None:
    with pytest.raises(BadInput, match=message) as info:
        parse_basic_auth(value)
    assert "secret-pw" not in str(info.value)


def test_argv_carries_auth_and_the_options_that_keep_flower_light() -> None:
    s = settings(
        flower_basic_auth="ops:pw,viewer:pw2",
        server_host="0.0.0.0",
        flower_port=5600,
        flower_max_tasks=2000,
        flower_purge_offline_workers=120,
        log_level="warning",
    )
    argv = flower_argv(s)
    assert argv == [
        "--address=0.0.0.0",
        "--port=5600",
        "--max_tasks=2000",
        "--persistent=False",
        "--purge_offline_workers=120",
        "--logging=warning",
        "--basic_auth=ops:pw,viewer:pw2",
    ]
    assert users(s) == ["ops", "viewer"]


def test_defaults_bind_localhost_and_bound_the_task_memory() -> None:
    argv = flower_argv(settings(flower_basic_auth="ops:pw"))
    assert "--address=127.0.0.1" in argv and "--port=5555" in argv
    assert "--max_tasks=10000" in argv


def test_no_credentials_refused_unless_no_auth_and_never_both() -> None:
    with pytest.raises(BadInput, match="Flower needs credentials"):
        flower_argv(settings())
    open_argv = flower_argv(settings(), no_auth=True)
    assert not any(a.startswith("--basic_auth") for a in open_argv)
    with pytest.raises(BadInput, match="--no-auth given but FLOWER_BASIC_AUTH is set"):
        flower_argv(settings(flower_basic_auth="ops:pw"), no_auth=True)


def test_generated_credentials_parse_and_differ() -> None:
    a, b = generate_basic_auth(), generate_basic_auth()
    assert a != b
    ((user, password),) = parse_basic_auth(a)
    assert user == "admin" and len(password) >= 16


def test_up_prints_flower_url_with_user_and_generated_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = Stack(settings(), gpus="none", workers_per_gpu=1, models=["shape_detector"])
    stack.print_urls()
    out = capsys.readouterr().out
    user, password = parse_basic_auth(stack.flower_auth)[0]
    assert f"flower   http://127.0.0.1:5555/  user {user}  password {password}" in out

    configured = Stack(
        settings(flower_basic_auth="ops:given-pw"),
        gpus="none",
        workers_per_gpu=1,
        models=["shape_detector"],
    )
    assert configured.flower_auth == "ops:given-pw"

    silent = Stack(
        settings(), gpus="none", workers_per_gpu=1, models=["shape_detector"], flower=False
    )
    silent.print_urls()
    assert "flower" not in capsys.readouterr().out


def test_up_refuses_malformed_flower_credentials_before_starting_anything() -> None:
    with pytest.raises(BadInput, match="FLOWER_BASIC_AUTH"):
        Stack(
            settings(flower_basic_auth="nocolon"),
            gpus="none",
            workers_per_gpu=1,
            models=["shape_detector"],
        )
