"""Tests of attrlens.redact: secrets out of every text that is shown, logged or stored."""

from __future__ import annotations

import pytest

from attrlens.redact import one_line, redact, redact_url, strip_userinfo


@pytest.mark.parametrize(
    ("url", "public", "bare"),
    [
        ("http://user:SECRET@host:8080/v1", "http://***@host:8080/v1", "http://host:8080/v1"),
        ("https://tok@api.example.com/v1", "https://***@api.example.com/v1",
         "https://api.example.com/v1"),
        # an unencoded '@' in the password: everything up to the authority's last '@'
        ("http://u:p@ss@host/v1", "http://***@host/v1", "http://host/v1"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
        ("http://host/path@notuserinfo", "http://host/path@notuserinfo",
         "http://host/path@notuserinfo"),
    ],
)
def test_urls(url, public, bare):
    assert redact_url(url) == public
    assert strip_userinfo(url) == bare


def test_key_in_query_string_is_redacted():
    assert redact_url("https://h/v1?api_key=abc123&x=1") == "https://h/v1?api_key=***&x=1"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("Incorrect API key provided: sk-proj-AbCdEf123456", "AbCdEf123456"),
        ("token hf_abcdefghijklmnop used", "hf_abcdefghijklmnop"),
        ("api_key=hunter2pass&model=x", "hunter2pass"),
        ('{"api-key": "s3cr3tvalue"}', "s3cr3tvalue"),
        ("password: opensesame99", "opensesame99"),
        ("see http://bob:pa55word@10.0.0.1/v1 now", "pa55word"),
    ],
)
def test_key_like_strings(text, leak):
    out = redact(text)
    assert leak not in out and "***" in out


def test_given_secrets_in_every_encoding():
    secret = "p@ss w/rd!"
    text = f"raw {secret}, encoded p%40ss%20w%2Frd%21, in a sentence."
    out = redact(text, [secret, None, ""])
    assert "p@ss" not in out and "p%40ss" not in out
    assert out.count("***") == 2
    # too short to redact safely: left alone rather than mangling ordinary words
    assert redact("a b c", ["a"]) == "a b c"


@pytest.mark.parametrize(
    "text",
    [
        "Bearer authentication required",
        "Basic Authentication required",
        "each generated token at position 3",
        "max_tokens=5 top_logprobs=2",
        "The server at http://127.0.0.1:8080/v1 answered HTTP 404",
    ],
)
def test_ordinary_text_is_kept(text):
    assert redact(text) == text


def test_one_line_html_page_gives_its_title():
    page = (
        "<html>\r\n<head><title>501 Not Implemented</title></head>\r\n<body>\r\n"
        "<center><h1>501 Not Implemented</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    assert one_line(page) == "501 Not Implemented"


def test_one_line_strips_tags_controls_and_truncates():
    out = one_line("<p>Bad <b>gateway</b> &amp; more</p>\n<script>x()</script>")
    assert out == "Bad gateway & more"
    assert one_line("\x1b[31mred\x1b[0m\nline\x00two\u202e") == "red line two"
    long = one_line("word " * 100, limit=40)
    assert len(long) == 40 and long.endswith("...") and "\n" not in long
