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
    with pytest.raises(dfdb.InvalidURL, match="from 0 to"):
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


@pytest.mark.parametrize("text", ["1e12", "86400.5", "-0.5", "0"])
def test_float_options_out_of_range_name_the_option_and_the_range(text: str) -> None:
    url = DatabaseURL.parse(f"etcd://h?timeout={text}")
    refused = r"^option timeout=\S+ is out of range: it must be above 0 and at most 86400 seconds$"
    with pytest.raises(dfdb.InvalidURL, match=refused):
        url.float_option("timeout", 3.0, positive=True)
    assert DatabaseURL.parse("etcd://h?timeout=86400").float_option("timeout", 3.0, positive=True) == 86400.0


def test_int_options_out_of_range_name_the_option_and_the_range() -> None:
    url = DatabaseURL.parse(f"memory://x?history={10**12}&page=1e3")
    with pytest.raises(dfdb.InvalidURL, match=r"history=1000000000000 is out of range: it must be from 1 to 2\d+$"):
        url.int_option("history", 10, minimum=1)
    with pytest.raises(dfdb.InvalidURL, match=r"page='1e3' is not an integer \(from 1 to 2147483647\)"):
        url.int_option("page", 10, minimum=1)


@pytest.mark.parametrize(
    "url", ["rediss://127.0.0.1:1/0?tls=false", "rediss+sentinel://127.0.0.1:1/mymaster?tls=no&sentinel_tls=false"]
)
def test_a_tls_scheme_with_tls_turned_off_is_refused(url: str) -> None:
    """``rediss://`` means TLS: ``tls=false`` contradicts it, and is refused rather than ignored."""
    with pytest.raises(dfdb.InvalidURL, match=r"tls=(false|no) contradicts .*rediss") as info:
        dfdb.connect(url)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("memory://x?history=1&history=2", "history"),
        ("sqlite:///tmp/x.db?timeout=1&timeout=1", "timeout"),
        ("redis://127.0.0.1:1/0?password=a&prefix=p&password=b", "password"),
    ],
)
def test_an_option_given_twice_is_refused_naming_it(url: str, option: str) -> None:
    with pytest.raises(dfdb.InvalidURL, match=f"option {option} is given twice") as info:
        DatabaseURL.parse(url)
    assert "=a" not in str(info.value) and "=b" not in str(info.value)  # values may be secrets
