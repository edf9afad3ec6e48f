"""Sessions: ``tests`` (lint, Debian's Chromium for the page tests, then the CI suite), ``lint`` (ruff),
``demo`` (the main job), ``bench`` (benchmarks).

Virtual environments live in ``~/.cache/fcvc/nox`` (``FCVC_NOX_ENVDIR`` overrides) and are reused:
every session still runs ``pip install -c constraints.txt`` so a reused environment is brought to the
pinned versions, and the project itself is reinstalled from this checkout each time.
"""

import os

import nox
import nox.command

nox.options.envdir = os.environ.get("FCVC_NOX_ENVDIR", os.path.expanduser("~/.cache/fcvc/nox"))
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]


def install(session: nox.Session, extras: str = "") -> None:
    session.install("-c", "constraints.txt", f".{extras}")
    session.install("--no-deps", "--force-reinstall", ".")


def ruff(session: nox.Session) -> None:
    session.run("ruff", "check", "src", "tests", "noxfile.py")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: pyflakes, pycodestyle errors, import order, imports at top level (pyproject.toml)."""
    session.install("-c", "constraints.txt", "ruff")
    ruff(session)


def ensure_browser(session: nox.Session) -> None:
    """Debian's Chromium for the page tests (``.ci/install-browser.sh``: apt-get when it is missing).

    A failed installation is only a warning: those tests then skip, saying how to install it.
    """
    try:
        session.run("bash", ".ci/install-browser.sh", external=True)
    except nox.command.CommandFailed:
        session.warn("chromium could not be installed: tests/serve/test_page.py will skip (apt-get install chromium)")


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, then the test suite (pass pytest options after --, e.g. ``nox -s tests -- -m 'not slow'``)."""
    install(session, "[test]")
    ruff(session)
    ensure_browser(session)
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """``fcvc demo`` on the bundled sample set (extra options after --)."""
    install(session)
    session.run("fcvc", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, each printing JSON with side-by-side ratios."""
    install(session, "[serve]")
    for name in ("extract", "decode", "train", "caption", "serve"):
        session.run("fcvc", "bench", name, "--json", *session.posargs)
