"""Secrets in URLs: parsed or refused, never shown; taken from a file or the environment."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfdb
from dfdb.certs import make_local_ca
from dfdb.cli import main as cli_main
from dfdb.models import LogicalSwitch
from dfdb.servers import free_port
from dfdb.tls import TlsSettings
from dfdb.url import DatabaseURL, Secret

SECRET = "p/a#s?s@w:o%rd"


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:pa/ss@127.0.0.1:6379/0",
        "etcd://user:1234/5678@127.0.0.1/p",
        "zk://user:pa?ss@127.0.0.1:2181/p",
        "redis://user:pa#ss@127.0.0.1:6379/0",
        f"etcd://{SECRET}@127.0.0.1/p",
    ],
)
def test_an_unescaped_password_is_refused_without_being_shown(url: str) -> None:
    with pytest.raises(dfdb.InvalidURL, match="percent-encode") as info:
        DatabaseURL.parse(url)
    password = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[-1]
    assert password not in str(info.value)


@pytest.mark.parametrize("scheme", ["redis", "rediss", "etcd", "zk"])
def test_a_percent_encoded_password_with_every_special_character_is_parsed(scheme: str) -> None:
    url = DatabaseURL.parse(f"{scheme}://user:{quote(SECRET, safe='')}@127.0.0.1:1234/p?timeout=3")
    assert (url.username, url.password, url.hosts, url.path) == ("user", SECRET, (("127.0.0.1", 1234),), "p")
    for text in (str(url), repr(url), url.render(), repr(url.secret)):
        assert SECRET not in text and quote(SECRET, safe="") not in text
    assert url.secret is not None and url.secret.reveal() == SECRET


def test_an_at_sign_in_the_password_is_parsed() -> None:
    url = DatabaseURL.parse("redis://user:p@ss@127.0.0.1/0")
    assert (url.password, url.hosts) == ("p@ss", (("127.0.0.1", None),))


def test_sqlite_paths_may_hold_an_at_sign() -> None:
    assert DatabaseURL.parse("sqlite:///tmp/a@b.db").path == "tmp/a@b.db"


def test_a_secret_is_masked_and_not_pickled() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret) and SECRET not in str(secret) and SECRET not in f"{secret}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_password_options_are_masked_in_the_rendered_url() -> None:
    url = DatabaseURL.parse("redis://127.0.0.1/0?password=topsecret")
    assert "topsecret" not in str(url)


def test_password_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    url = DatabaseURL.parse(f"etcd://user@127.0.0.1/p?password_file={path}&timeout=2").with_credentials({})
    assert (url.password, dict(url.options)) == (SECRET, {"timeout": "2"})
    env = {"DFDB_PASSWORD": SECRET}
    assert DatabaseURL.parse("etcd://user@127.0.0.1/p").with_credentials(env).password == SECRET
    assert DatabaseURL.parse("etcd://127.0.0.1/p").with_credentials(env).password is None  # no user named
    assert DatabaseURL.parse("etcd://user:given@127.0.0.1/p").with_credentials(env).password == "given"
    with pytest.raises(dfdb.InvalidURL, match="not both"):
        DatabaseURL.parse(f"etcd://user:x@h/p?password_file={path}").with_credentials({})
    with pytest.raises(dfdb.InvalidURL, match="cannot read password_file"):
        DatabaseURL.parse(f"etcd://user@h/p?password_file={tmp_path / 'missing'}").with_credentials({})


def test_tls_options_are_checked_at_once(tmp_path: Path) -> None:
    with pytest.raises(dfdb.InvalidURL, match="need tls=true"):
        TlsSettings.from_url(DatabaseURL.parse("etcd://h/p?ca_file=/x"))
    with pytest.raises(dfdb.InvalidURL, match="go together"):
        TlsSettings.from_url(DatabaseURL.parse("etcd://h/p?tls=1&cert_file=/x"))
    with pytest.raises(dfdb.InvalidURL, match="cannot read ca_file"):
        TlsSettings.from_url(DatabaseURL.parse(f"etcd://h/p?tls=1&ca_file={tmp_path / 'none'}"))
    with pytest.raises(dfdb.InvalidURL, match="true or false"):
        TlsSettings.from_url(DatabaseURL.parse("etcd://h/p?tls=maybe"))
    assert TlsSettings.from_url(DatabaseURL.parse("etcd://h/p")) is None
    assert TlsSettings.from_url(DatabaseURL.parse("etcd://h/p?tls=true")) == TlsSettings()


def test_a_password_file_that_holds_no_password_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "newline").write_text("\n")
    (tmp_path / "huge").write_text("x" * 100_000)
    for path, reason in [
        (tmp_path / "empty", "is empty"),  # an unfilled secret mount: not an empty password
        (tmp_path / "newline", "is empty"),
        (Path(os.devnull), "is empty"),
        (tmp_path, "Is a directory"),
        (tmp_path / "huge", "not a password"),
        (Path("/dev/zero"), "not a password"),  # read without bound, it never ends
    ]:
        with pytest.raises(dfdb.InvalidURL, match=reason) as info:
            DatabaseURL.parse(f"redis://user@h/0?password_file={path}").with_credentials({})
        assert "x" * 100 not in str(info.value)


@pytest.mark.parametrize("scheme", ["etcd", "zk"])
async def test_a_user_without_a_password_is_told_where_a_password_may_come_from(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DFDB_PASSWORD", raising=False)
    with pytest.raises(dfdb.InvalidURL, match=r"names the user 'alice' but no password.*password_file.*DFDB_PASSWORD"):
        async with dfdb.connect(f"{scheme}://alice@127.0.0.1:{free_port()}/p", timeout=1):
            pass
    with pytest.raises(dfdb.InvalidURL, match="gives a password but no user name") as info:
        async with dfdb.connect(f"{scheme}://:{_ENCODED}@127.0.0.1:{free_port()}/p", timeout=1):
            pass
    assert SECRET not in str(info.value)


def test_credentials_for_a_backend_without_authentication_are_refused(tmp_path: Path) -> None:
    """SQLite and memory:// check no password: one given is a mistake, not silently ignored."""
    (tmp_path / "pw").write_text(SECRET + "\n")
    for url in (
        f"sqlite:///{tmp_path}/a.db?password_file={tmp_path / 'pw'}",
        f"sqlite://u:{_ENCODED}@/{tmp_path}/a.db",
        f"memory://u:{_ENCODED}@name",
        "memory://u@name",
    ):
        with pytest.raises(dfdb.InvalidURL, match="no authentication") as info:
            dfdb.connect(url)
        assert SECRET not in str(info.value) and _ENCODED not in str(info.value)


def test_the_repr_of_a_url_masks_secret_options() -> None:
    url = DatabaseURL.parse(f"redis://user:{quote(SECRET, safe='')}@h/0?password=hunter2&token=t0ken&prefix=p")
    assert "hunter2" not in repr(url) and "t0ken" not in repr(url) and SECRET not in repr(url)
    assert "'prefix': 'p'" in repr(url)


def _encrypted_key(key_file: Path, target: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    target.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return target


@pytest.mark.parametrize("scheme", ["rediss", "etcd", "zk"])
async def test_tls_files_that_are_no_certificate_or_key_are_refused_at_once(scheme: str, tmp_path: Path) -> None:
    """Not a certificate, a key of another certificate, an encrypted key (never a passphrase
    prompt): an ``InvalidURL`` naming the file at ``connect``, on every backend."""
    ca, other = make_local_ca(tmp_path / "ca"), make_local_ca(tmp_path / "other")
    (tmp_path / "not.pem").write_text("not a certificate\n")
    encrypted = _encrypted_key(ca.client_key, tmp_path / "encrypted.pem")
    path = "0" if scheme == "rediss" else "p"
    base = f"{scheme}://127.0.0.1:{free_port()}/{path}?tls=true&timeout=2"
    for options, reason in [
        (f"ca_file={tmp_path / 'not.pem'}", "ca_file .* holds no PEM certificate"),
        (f"ca_file={ca.ca_file}&cert_file={ca.client_cert}&key_file={other.client_key}", "KEY_VALUES_MISMATCH"),
        (f"ca_file={ca.ca_file}&cert_file={ca.client_key}&key_file={ca.client_key}", "not a PEM certificate"),
        (f"ca_file={ca.ca_file}&cert_file={ca.client_cert}&key_file={encrypted}", "is encrypted"),
    ]:
        started = time.monotonic()
        with pytest.raises(dfdb.InvalidURL, match=reason):
            async with dfdb.connect(f"{base}&{options}") as nb:
                await nb.get_all(LogicalSwitch)
        assert time.monotonic() - started < 1.5  # said at once, not after trying to connect


_URL_TEXT = st.text(alphabet=st.sampled_from("abc:/@?#%&=[]19.,+- \x00é"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(["redis", "rediss", "etcd", "zk", "memory", "sqlite", "x"]), rest=_URL_TEXT)
def test_any_url_parses_or_is_one_clear_error_without_the_password(scheme: str, rest: str) -> None:
    text = f"{scheme}://user:{SECRET}@{rest}"
    try:
        url = DatabaseURL.parse(text)
    except dfdb.InvalidURL as exc:
        message = str(exc)
        assert "\n" not in message and SECRET not in message
        return
    for shown in (str(url), repr(url)):
        assert "p/a#s?s" not in shown


_ENCODED = quote(SECRET, safe="")


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:{_ENCODED}@127.0.0.1:{{port}}/0",
        f"rediss://u:{_ENCODED}@127.0.0.1:{{port}}/0?verify=false",
        f"etcd://u:{_ENCODED}@127.0.0.1:{{port}}/p?timeout=0.2",
        f"etcd://u:{_ENCODED}@127.0.0.1:{{port}}/p?tls=true&timeout=0.2",
        f"zk://u:{_ENCODED}@127.0.0.1:{{port}}/p?timeout=0.5",
        f"zk://u:{_ENCODED}@127.0.0.1:{{port}}/p?tls=true&timeout=0.5",
        f"redis://u:{_ENCODED}@127.0.0.1:{{port}}/0?bogus=1",
        f"etcd://u:{_ENCODED}@127.0.0.1:{{port}}/p?ca_file=/nonexistent",
        f"redis://u:{SECRET}@127.0.0.1:{{port}}/0",
        f"redis+sentinel://u:{_ENCODED}@127.0.0.1:{{port}}/m?sentinel_password={_ENCODED}",
        f"rediss+sentinel://u:{_ENCODED}@127.0.0.1:{{port}}/m?sentinel_username=s&sentinel_password={_ENCODED}",
        f"redis+sentinel://u:{_ENCODED}@127.0.0.1:{{port}}/m?sentinel_password={_ENCODED}&bogus=1",
    ],
)
async def test_no_error_path_shows_the_password(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = url.format(port=free_port())  # nothing listens there
    with pytest.raises(dfdb.DfdbError) as info:
        async with dfdb.connect(url, timeout=1) as nb:
            await nb.get_all(LogicalSwitch)
    shown = [str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)]
    assert not [text for text in shown if SECRET in text or _ENCODED in text]


def test_the_command_line_shows_no_password_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for url in (f"etcd://u:{_ENCODED}@127.0.0.1:{free_port()}/p?timeout=0.2", f"redis://u:{SECRET}@127.0.0.1/0"):
        done = subprocess.run(
            [sys.executable, "-m", "dfdb", "--db", url, "--timeout", "1", "ls", "lswitch"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode in (1, 2) and output.count("\n") == 1, output
        assert SECRET not in output and _ENCODED not in output and "Traceback" not in output


_CLOSED_PORT = free_port()


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(["redis", "etcd", "zk"]),
    encode=st.booleans(),
    command=st.sampled_from([["ls"], ["get"], ["rm"], ["put"], ["watch"], ["tables"]]),
    words=st.lists(st.text(alphabet=st.sampled_from("ab{}\"':/@?#-=1 "), max_size=12), max_size=2),
)
def test_the_command_line_never_shows_a_password_nor_a_traceback(
    scheme: str, encode: bool, command: list[str], words: list[str]
) -> None:
    password = _ENCODED if encode else SECRET
    url = f"{scheme}://u:{password}@127.0.0.1:{_CLOSED_PORT}/p"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli_main(["--db", url, "--timeout", "0.2", *command, *words])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code  # type: ignore[assignment]
    out, err = stdout.getvalue(), stderr.getvalue()
    assert code in (0, 1, 2)
    assert SECRET not in out + err and _ENCODED not in out + err and "Traceback" not in err


def test_a_password_file_that_is_a_pipe_nobody_writes_does_not_hang(tmp_path: Path) -> None:
    """A named pipe without a writer blocks ``open`` forever: it is read without waiting
    (nothing in it: empty), in a process of its own so that the old hang fails the test."""
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "dfdb", "--db", f"redis://u@127.0.0.1:1/0?password_file={fifo}", "ls", "lswitch"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"dfdb: error: password_file '{fifo}' is empty\n"
