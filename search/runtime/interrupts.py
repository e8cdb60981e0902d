"""Ctrl-C and SIGTERM in the driver: stop within seconds, keep what was done, say what was kept.

Two things made a driver deaf to them:

- Ray Tune installs its own SIGINT handler when a fit starts and puts the previous one back
  only when a SIGINT arrives (``ray.tune.tune._setup_signal_catching``). After a fit that
  ended normally (the search's, then the confirmation's), Ctrl-C went to a stale Tune
  handler that set an event nobody read: the summary's evaluation of the baselines ran on.
- ``ray.init`` makes SIGTERM call ``sys.exit(15)`` wherever the main thread is; inside
  torch during the summary's evaluation the driver then died with a native stack dump
  (exit 134), and during a fit the search run was closed as FAILED (a stopped Ray Job).

:func:`fit` runs ``tuner.fit()`` so that the first Ctrl-C or SIGTERM asks Tune to stop the
way its own Ctrl-C does (trials stopped, the experiment's state saved, so ``Tuner.restore``
continues it), a second one stops at once, and the handlers are what they were afterwards.
:func:`stop_on_sigterm` makes SIGTERM raise ``KeyboardInterrupt`` like Ctrl-C. The command
line turns :class:`Interrupted` into its message and exit status 130.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

# Read by Ray Tune when a fit starts: its SIGINT handler stays out of the way of ours.
TUNE_SIGINT_SWITCH = "TUNE_DISABLE_SIGINT_HANDLER"
EXIT_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a command; the message says what was kept and how to go on."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_sigterm() -> None:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread, as Ctrl-C does (call it after
    ``ray.init``, which installs ``sys.exit`` for SIGTERM); nothing outside the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def fit(tuner) -> Any:
    """Returns ``tuner.fit()``'s result; raises :class:`Interrupted` when Ctrl-C or SIGTERM
    stopped it (after Tune stopped the trials and saved the experiment's state).

    A second signal raises ``KeyboardInterrupt`` at once. The SIGINT, SIGTERM and SIGUSR1
    handlers are put back as they were, whatever happens.
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()  # signals reach the main thread only; nothing to arrange
    watched = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
    before = {s: signal.getsignal(s) for s in watched}
    received: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        received.append(signum)
        # Tune's stop, which it installs for SIGUSR1 in every fit: ends its loop, saves the state.
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_stop) or tune_stop is before[signal.SIGUSR1]:
            raise KeyboardInterrupt(signal.Signals(signum).name)  # no fit loop to ask (yet)
        tune_stop(signal.SIGUSR1, frame)

    switch = os.environ.get(TUNE_SIGINT_SWITCH)
    os.environ[TUNE_SIGINT_SWITCH] = "1"
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        result = tuner.fit()
    finally:
        if switch is None:
            os.environ.pop(TUNE_SIGINT_SWITCH, None)
        else:
            os.environ[TUNE_SIGINT_SWITCH] = switch
        for s, handler in before.items():
            signal.signal(s, handler)
    if received:
        raise Interrupted(signal.Signals(received[0]).name)
    return result
