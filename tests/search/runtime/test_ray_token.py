"""The dashboard token of a head started with RAY_AUTH_MODE=token, read where Ray documents it."""

from __future__ import annotations

import pytest

from search.runtime.jobs import ray_token_headers


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_no_header_without_token_mode(no_token):
    no_token.setenv("RAY_AUTH_TOKEN", "secret")
    assert ray_token_headers() == {}


def test_the_environment_token_comes_first(no_token, tmp_path):
    no_token.setenv("RAY_AUTH_MODE", "token")
    no_token.setenv("RAY_AUTH_TOKEN", "from-env")
    (tmp_path / "t").write_text("from-file\n")
    no_token.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert ray_token_headers() == {"Authorization": "Bearer from-env"}


def test_then_the_token_path_then_the_default_file(no_token, tmp_path):
    no_token.setenv("RAY_AUTH_MODE", "token")
    (tmp_path / "t").write_text("from-file\n")
    no_token.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert ray_token_headers() == {"Authorization": "Bearer from-file"}
    no_token.delenv("RAY_AUTH_TOKEN_PATH")
    assert ray_token_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("default")
    assert ray_token_headers() == {"Authorization": "Bearer default"}
