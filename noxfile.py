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
def sentinel(session: nox.Session) -> None:
    """The conformance suite (or the test files given) on a Sentinel-managed Redis (master, 2 replicas,
    3 sentinels; not part of the default run, which has the failover tests)."""
    session.install("-e", ".[all,dev]")
    url = "redis+sentinel://{sentinel}/mymaster?db=0&prefix={name}"
    files = [a for a in session.posargs if a.startswith("tests/")] or ["tests/test_conformance.py"]
    session.run("pytest", *files, "--dfdb-url", url, *[a for a in session.posargs if a not in files])


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The chaos suite and the cancellation harness on every backend, servers and polling included
    (not part of the default run). Prints its seed; ``nox -s chaos -- --hypothesis-seed=N`` replays it.
    ``DFDB_CHAOS_EXAMPLES`` / ``DFDB_CHAOS_STEPS`` set the examples per case and the steps per example,
    ``DFDB_CHAOS_SHRINK=0`` reports a failure unshrunk (quicker); test files given in the arguments run alone."""
    session.install("-e", ".[all,dev]")
    args = list(session.posargs)
    files = [a for a in args if a.startswith("tests/")] or ["tests/test_chaos.py", "tests/test_cancellation.py"]
    args = [a for a in args if a not in files]
    if not any(a.startswith("--hypothesis-seed") for a in args):
        seed = random.getrandbits(32)
        session.log(f"chaos seed {seed}: replay with nox -s chaos -- --hypothesis-seed={seed}")
        args.append(f"--hypothesis-seed={seed}")
    session.run(
        "pytest", "-p", "no:cacheprovider", "-rA", *files, *args,
        env={"DFDB_CHAOS": "1"},
    )  # fmt: skip
