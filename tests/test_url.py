from __future__ import annotations

import pytest

import dfdb
from dfdb.url import DatabaseURL


def test_parse_hosts_credentials_path_and_options() -> None:
    url = DatabaseURL.parse("etcd://user:s3cret@h1:2379,h2:2380,[::1]:2381/prefix?timeout=3&x=")
    assert url.scheme == "etcd"
    assert url.hosts == (("h1", 2379), ("h2", 2380), ("::1", 2381))
    assert (url.username, url.password, url.path) == ("user", "s3cret", "prefix")
    assert url.float_option("timeout", 1.0) == 3.0
    assert url.option("x") == ""


def test_password_is_never_shown() -> None:
    url = DatabaseURL.parse("redis://u:topsecret@127.0.0.1:6379/0")
    for text in (str(url), repr(url), url.render()):
        assert "topsecret" not in text
    assert "***" in str(url)
    assert "topsecret" in url.render(mask=False)


@pytest.mark.parametrize(
    "bad", ["", "no-scheme", "redis://h:notaport", "redis://h:70000", "bad scheme://x", "redis://[::1"]
)
def test_bad_urls_are_clear_errors(bad: str) -> None:
    with pytest.raises(dfdb.InvalidURL):
        DatabaseURL.parse(bad)


def test_typed_options() -> None:
    url = DatabaseURL.parse("memory://x?history=abc&n=-1")
    with pytest.raises(dfdb.InvalidURL, match="history"):
        url.int_option("history", 1)
    with pytest.raises(dfdb.InvalidURL, match="at least"):
        url.int_option("n", 1, minimum=0)
    assert url.int_option("absent", 7) == 7


def test_bad_password_url_error_is_masked() -> None:
    with pytest.raises(dfdb.InvalidURL) as info:
        DatabaseURL.parse("x")
    assert "x" in str(info.value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_float_options_must_be_finite(text: str) -> None:
    url = DatabaseURL.parse(f"etcd://h?timeout={text}")
    with pytest.raises(dfdb.InvalidURL, match="timeout"):
        url.float_option("timeout", 3.0)
