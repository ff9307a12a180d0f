"""Development sessions: ``nox`` runs lint, mypy, tests and examples."""

from __future__ import annotations

import glob
import random

import nox

nox.options.sessions = ["lint", "mypy", "tests", "examples"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def mypy(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[all,dev]")
    session.run("mypy", "src")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, the conformance suite on every built-in driver included."""
    session.install("-e", ".[all,dev]")
    session.run("pytest", *session.posargs)


TLS_URLS = [
    "rediss://{redis_tls}/0?prefix={name}&{redis_tls_options}",
    "etcd://{etcd_tls}/{name}?{etcd_tls_options}",
    "zk://{zookeeper_tls}/{name}?{zookeeper_tls_options}&bucket_size=100&keep=30&idle=1",
]


@nox.session(python=PYTHON)
def tls(session: nox.Session) -> None:
    """The conformance suite over TLS on every server backend (not part of the default run)."""
    session.install("-e", ".[all,dev]")
    urls = [arg for url in TLS_URLS for arg in ("--dfdb-url", url)]
    # the unreadable-record test writes its record through a plain client of its own
    unreadable = ("-k", "not unreadable_change_record")
    session.run("pytest", "tests/test_conformance.py", *urls, *unreadable, *session.posargs)


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every example as a user would."""
    session.install("-e", ".")
    for path in sorted(glob.glob("examples/*.py")):
        session.run("python", path)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmarks (not part of the default run); writes docs/benchmarks.md."""
    session.install("-e", ".[all]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The chaos suite and the cancellation harness on every backend, servers and polling included
    (not part of the default run). Prints its seed; ``nox -s chaos -- --hypothesis-seed=N`` replays it.
    ``DFDB_CHAOS_EXAMPLES`` / ``DFDB_CHAOS_STEPS`` set the examples per case and the steps per example."""
    session.install("-e", ".[all,dev]")
    args = list(session.posargs)
    if not any(a.startswith("--hypothesis-seed") for a in args):
        seed = random.getrandbits(32)
        session.log(f"chaos seed {seed}: replay with nox -s chaos -- --hypothesis-seed={seed}")
        args.append(f"--hypothesis-seed={seed}")
    session.run(
        "pytest", "-p", "no:cacheprovider", "-rA", "tests/test_chaos.py", "tests/test_cancellation.py", *args,
        env={"DFDB_CHAOS": "1"},
    )  # fmt: skip
