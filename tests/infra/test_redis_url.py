"""redis+sentinel:// URLs: what they name, and the clear error a bad one gets at start-up."""

from __future__ import annotations

import pytest

from loraplex.redis_connect import (
    RedisURLError,
    SentinelTarget,
    check_redis_url,
    connect_redis,
    parse_sentinel_url,
)


def test_sentinels_master_and_db() -> None:
    assert parse_sentinel_url("redis+sentinel://a:26380, b ,c:1/prod/3") == SentinelTarget(
        (("a", 26380), ("b", 26379), ("c", 1)), "prod", 3
    )
    assert parse_sentinel_url("redis+sentinel://u:pw@h:5/m") == SentinelTarget(
        (("h", 5),), "m", 0, "u", "pw"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:1", "master-name"),
        ("redis+sentinel://h:1/m/x", "bad db"),
        ("redis+sentinel://h:1/m/0/more", "master-name"),
        ("redis+sentinel://h:99999/m", "bad port"),
        ("redis+sentinel://h:1,:2/m", "without a host"),
        ("http://h:1/0", "must start with"),
        ("127.0.0.1:6379", "must start with"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(RedisURLError, match=says):
        check_redis_url(url)
    with pytest.raises(RedisURLError, match=says):
        connect_redis(url)


def test_plain_urls_pass() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:1", "unix:///tmp/r.sock"):
        check_redis_url(url)
