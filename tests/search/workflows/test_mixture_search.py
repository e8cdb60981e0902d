"""The search's launch: what it changes in the process must not outlive its fit."""

from __future__ import annotations

import os

import pytest

from search.workflows.mixture_search import NO_AUTO_LOGGERS, _only_our_loggers


def test_tunes_automatic_loggers_are_off_only_while_the_search_fits(monkeypatch):
    # The variable once stayed set after a search: every later fit of the process (probe passes, the
    # confirmation, a plan's next group, a test's driver it started) wrote no result.json.
    monkeypatch.delenv(NO_AUTO_LOGGERS, raising=False)
    with _only_our_loggers():
        assert os.environ[NO_AUTO_LOGGERS] == "1"
    assert NO_AUTO_LOGGERS not in os.environ


def test_a_users_setting_of_tunes_loggers_is_kept(monkeypatch):
    monkeypatch.setenv(NO_AUTO_LOGGERS, "0")
    with _only_our_loggers():
        assert os.environ[NO_AUTO_LOGGERS] == "0"
    assert os.environ[NO_AUTO_LOGGERS] == "0"


def test_the_variable_is_restored_when_the_fit_fails(monkeypatch):
    monkeypatch.delenv(NO_AUTO_LOGGERS, raising=False)
    with pytest.raises(KeyboardInterrupt), _only_our_loggers():
        raise KeyboardInterrupt
    assert NO_AUTO_LOGGERS not in os.environ
