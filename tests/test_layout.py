"""The shape of the package: the runtime never loads test code or the benchmark
runner, and every source file stays small enough to read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MAX_LINES = 600


def loaded_modules(*imports: str, then: str = "") -> list[str]:
    """The dfdb modules that a fresh interpreter holds after ``import`` of ``imports``
    and the statement ``then``."""
    code = (
        f"import sys\nimport {', '.join(imports)}\n{then}\n"
        "import json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'dfdb')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    modules: list[str] = json.loads(result.stdout)
    return modules


def test_the_runtime_loads_no_test_code_and_no_benchmarks() -> None:
    modules = loaded_modules("dfdb", "dfdb.cli")
    assert "dfdb.cli" in modules and "dfdb.nb" in modules
    strays = [m for m in modules if m.split(".")[:2] in (["dfdb", "testing"], ["dfdb", "bench"])]
    assert strays == []


def test_the_server_command_loads_no_test_code() -> None:
    modules = loaded_modules("contextlib, io, dfdb.cli", then=(
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        "    assert dfdb.cli.main(['server', 'run', 'nosuch']) == 2"
    ))  # fmt: skip
    assert "dfdb.servers" in modules
    assert [m for m in modules if m.startswith(("dfdb.testing", "dfdb.bench"))] == []


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(ROOT).as_posix() for p in SRC.rglob("*.py")), ids=lambda p: p.removeprefix("src/")
)
def test_source_file_is_at_most_600_lines(path: str) -> None:
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines; split it into modules a reader can hold"
