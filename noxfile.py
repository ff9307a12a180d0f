"""Development sessions: ``nox`` runs lint, mypy, tests, examples and the lowest dependencies.

Sessions run on one Python from 3.11 to 3.13: the one running nox when it is among
them, else the newest one installed; ``nox --force-python 3.13`` picks another.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import nox
from packaging.requirements import Requirement

nox.needs_version = ">=2025.2.9"  # nox.project.dependency_groups
nox.options.sessions = ["lint", "mypy", "tests", "examples", "lowest", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

SUPPORTED = ("3.11", "3.12", "3.13")
PYPROJECT = nox.project.load_toml("pyproject.toml")
DEV = nox.project.dependency_groups(PYPROJECT, "dev")


def _installed(version: str) -> bool:
    """Whether ``pythonX.Y`` on PATH runs (a pyenv shim of a version not selected does not)."""
    exe = shutil.which(f"python{version}")
    return exe is not None and subprocess.run([exe, "-c", ""], capture_output=True, check=False).returncode == 0


def _choose(preferred: tuple[str, ...]) -> str:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = ([running] if running in SUPPORTED else []) + list(preferred)
    return next((v for v in candidates if _installed(v)), preferred[0])


PYTHON = _choose(SUPPORTED[::-1])
LOWEST_PYTHON = _choose(SUPPORTED)  # the oldest one installed, unless nox runs on another


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def mypy(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[all]", *DEV)
    session.run("mypy", "src")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, the conformance suite on every built-in driver included."""
    session.install("-e", ".[all]", *DEV)
    session.run("pytest", *session.posargs)


TLS_URLS = [
    "rediss://{redis_tls}/0?prefix={name}&{redis_tls_options}",
    "etcd://{etcd_tls}/{name}?{etcd_tls_options}",
    "zk://{zookeeper_tls}/{name}?{zookeeper_tls_options}&bucket_size=100&keep=30&idle=1",
]


@nox.session(python=PYTHON)
def tls(session: nox.Session) -> None:
    """The conformance suite over TLS on every server backend, and the TLS refusals that need
    servers of their own: expired certificates, TLS and plain mixed up (not part of the default run)."""
    session.install("-e", ".[all]", *DEV)
    urls = [arg for url in TLS_URLS for arg in ("--dfdb-url", url)]
    # the unreadable-record test writes its record through a plain client of its own
    unreadable = ("-k", "not unreadable_change_record")
    session.run("pytest", "tests/test_conformance.py", *urls, *unreadable, *session.posargs)
    # refusals at the edges, each on servers of its own (slow: ZooKeeper starts a JVM each time)
    session.run("pytest", "tests/test_tls_refusals.py", *session.posargs, env={"DFDB_TLS": "1"})


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every example as a user would."""
    session.install("-e", ".")
    for path in sorted(glob.glob("examples/*.py")):
        session.run("python", path)


def lowest_constraints(extras: tuple[str, ...]) -> list[str]:
    """``name==floor`` for each dependency of the package and of ``extras`` (their ``>=`` bound)."""
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += [r for r in project["optional-dependencies"][extra] if not r.startswith("dfdb[")]
    pins = []
    for line in requirements:
        requirement = Requirement(line)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        if not floors:
            raise ValueError(f"{line}: a dependency needs a >= floor")
        pins.append(f"{requirement.name}=={floors[0]}")
    return pins


@nox.session(python=LOWEST_PYTHON)
def lowest(session: nox.Session) -> None:
    """The memory and SQLite tests on the lowest versions the dependencies allow."""
    constraints = Path(session.create_tmp()) / "lowest.txt"
    constraints.write_text("\n".join(lowest_constraints(("sqlite",))) + "\n")
    session.install("-c", str(constraints), "-e", ".[sqlite]", *DEV)
    session.run("python", "-m", "pip", "freeze", silent=False)
    urls = ["--dfdb-url", "memory://{name}", "--dfdb-url", "sqlite:///{tmp}/{name}.db"]
    session.run(
        "pytest", "-q", "-p", "no:cacheprovider", *urls, "tests/test_conformance.py", "tests/test_nb.py",
        "tests/test_models.py", "tests/test_sqlite.py",
        "-k", "not refuses_trio and not test_cli_ and not several_processes", *session.posargs,
    )  # fmt: skip


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site: ``mkdocs build --strict`` (a warning fails it) into ``site/``."""
    session.install("-e", ".", *nox.project.dependency_groups(nox.project.load_toml("pyproject.toml"), "docs"))
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmarks (not part of the default run); writes docs/benchmarks.md and the growth
    chart docs/benchmarks-growth.png (matplotlib: the bench extra)."""
    session.install("-e", ".[all,bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def fleet(session: nox.Session) -> None:
    """The fleet simulator on Redis and etcd at several sizes (not part of the default run);
    keeps each run's figures in docs/fleet/ and draws docs/scale-chart.png. Arguments go to
    benchmarks/fleet.py."""
    session.install("-e", ".[all,fleet]")
    session.run("python", "benchmarks/fleet.py", *session.posargs)


@nox.session(python=PYTHON)
def sentinel(session: nox.Session) -> None:
    """The conformance suite (or the test files given) on a Sentinel-managed Redis (master, 2 replicas,
    3 sentinels; not part of the default run, which has the failover tests)."""
    session.install("-e", ".[all]", *DEV)
    url = "redis+sentinel://{sentinel}/mymaster?db=0&prefix={name}"
    files = [a for a in session.posargs if a.startswith("tests/")] or ["tests/test_conformance.py"]
    session.run("pytest", *files, "--dfdb-url", url, *[a for a in session.posargs if a not in files])


@nox.session(python=PYTHON)
def failover(session: nox.Session) -> None:
    """The Sentinel failover tests at full size: ``kill -9`` of the master during 2,000 writes
    (the default run has 800; not part of the default run)."""
    session.install("-e", ".[all]", *DEV)
    env = {"DFDB_SENTINEL_WRITES": "2000"}
    session.run("pytest", "-s", "tests/test_redis_sentinel.py", *session.posargs, env=env)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The chaos suite and the cancellation harness on every backend, servers and polling included
    (not part of the default run). Prints its seed; ``nox -s chaos -- --hypothesis-seed=N`` replays it.
    ``DFDB_CHAOS_EXAMPLES`` / ``DFDB_CHAOS_STEPS`` set the examples per case and the steps per example,
    ``DFDB_CHAOS_SHRINK=0`` reports a failure unshrunk (quicker); test files given in the arguments run alone."""
    session.install("-e", ".[all]", *DEV)
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


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The randomized Replica runs at full length, 10,000 steps for every seed on every backend
    (not part of the default run: the first seed takes 10,000 steps on memory there, the other
    runs 2,000); ``DFDB_REPLICA_STEPS`` set in the environment picks another length."""
    session.install("-e", ".[all]", *DEV)
    steps = os.environ.get("DFDB_REPLICA_STEPS", "10000")
    test = "tests/test_replica.py::test_randomized_replicas_converge"
    session.run("pytest", "-p", "no:cacheprovider", test, *session.posargs, env={"DFDB_REPLICA_STEPS": steps})


@nox.session(python=PYTHON)
def liveness(session: nox.Session) -> None:
    """The long liveness runs on every server backend (not part of the default run, which has the
    kill -9 test): expiry delays measured 10 times each (median and worst printed), a lock holder
    paused past its TTL, 8 contending lock holders of which two are killed, and leases held
    through a server restart, an etcd leader kill and a ZooKeeper session expiry."""
    session.install("-e", ".[all]", *DEV)
    session.run("pytest", "-s", "tests/test_liveness.py", *session.posargs, env={"DFDB_LIVENESS": "1"})
