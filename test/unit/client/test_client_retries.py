# SPDX-License-Identifier: GPL-2.0-or-later
"""The client's retries option: a count or a whole policy."""

from __future__ import annotations

import pytest

from ovirt_imageio import client
from ovirt_imageio.client._imageio import RETRIES, retry_policy
from ovirt_imageio.client._options import parser


def test_default_retries() -> None:
    assert RETRIES == 3
    assert retry_policy(RETRIES) == client.Retry()


@pytest.mark.parametrize("value,retries", [(0, 0), (3, 3), (128, 128)])
def test_retry_policy_from_count(value: int, retries: int) -> None:
    policy = retry_policy(value)
    assert policy.retries == retries
    assert policy.backoff == client.Retry().backoff


def test_retry_policy_passes_policy() -> None:
    policy = client.Retry(retries=1, backoff=0.1)
    assert retry_policy(policy) is policy


@pytest.mark.parametrize("value", [-1, True, "3", 1.5, None])
def test_retry_policy_invalid(value: object) -> None:
    with pytest.raises(ValueError):
        retry_policy(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["upload", "download"])
@pytest.mark.parametrize("argv,retries", [
    ([], 3), (["--retries", "0"], 0), (["--retries", "10"], 10),
])
def test_cli_retries(command: str, argv: list[str], retries: int) -> None:
    args = parser().parse_args([command, "a", "b", *argv])
    assert args.retries == retries


@pytest.mark.parametrize("value", ["-1", "129", "x"])
def test_cli_invalid_retries(value: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["upload", "a", "b", "--retries", value])
    assert "--retries" in capsys.readouterr().err
