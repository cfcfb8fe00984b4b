"""A stop request (SIGTERM, SIGINT) that is not lost where Python ignores exceptions.

``rws train`` and ``rws eval`` stop on SIGTERM and SIGINT as on Ctrl-C: the handler
raises KeyboardInterrupt wherever the main thread is. Python prints an exception raised
inside a ctypes callback as "Exception ignored" and carries on, and numba's compiler
runs such a callback while it writes a kernel's object code, so a ``kill`` that landed
there was lost and the command ran to its end. The handler therefore also records the
request, and the training and evaluation loops call :func:`check` between steps and
passes, which raises it again.
"""
import signal

requested = False


def request(signum, frame) -> None:
    """The handler of SIGTERM and SIGINT: record the request and raise it here."""
    global requested
    requested = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (and perhaps swallowed)."""
    if requested:
        raise KeyboardInterrupt


def install() -> None:
    """Stop on SIGTERM (``kill``) and SIGINT. A command started with ``&`` from a script
    inherits SIGINT ignored; this undoes that."""
    global requested
    requested = False
    signal.signal(signal.SIGTERM, request)
    signal.signal(signal.SIGINT, request)
