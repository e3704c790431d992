"""Redaction of secrets from text that may be shown, logged or stored.

Pure functions, no attrlens imports: every layer (model clients, the call cache, result
writers, the CLI) may use them.

- ``redact_url(url)``: the URL with its userinfo (``user:password@``) replaced by ``***@``.
- ``strip_userinfo(url)``: the URL with its userinfo removed (what requests are sent to).
- ``redact(text, secrets=())``: ``text`` with every given secret, every URL userinfo and
  everything key-like (``Bearer ...``, ``sk-...``, ``api_key=...``, ...) replaced by ``***``.
- ``one_line(text, limit)``: server text made safe for a terminal line (no HTML tags, no
  control characters, whitespace collapsed, truncated).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

MASK = "***"

# scheme://userinfo@ (userinfo: anything up to '@' that is not a delimiter of the authority)
# (greedy: a password with an unencoded '@' is covered up to the last '@' of the authority)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]+)@")
# an HTTP credential: the value must look like a token (a digit or one of -_.~+/=), so that
# "Bearer authentication required" stays readable
_BEARER = re.compile(
    r"\b(?P<kind>[Bb]earer|BEARER|[Bb]asic|BASIC)(?P<sep>\s+)"
    r"(?P<val>(?=[A-Za-z0-9._~+/\-]*[0-9._~+/=\-]|[A-Za-z0-9._~+/\-]+[A-Z])[A-Za-z0-9._~+/\-]+=*)"
)
# provider key formats: OpenAI/Anthropic/DeepSeek sk-, Hugging Face hf_, Groq gsk_, xAI xai-,
# Google AIza, GitHub ghp_/github_pat_, Replicate r8_, Slack xox?-
_KEY_LIKE = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}"
    r"|\b(?:hf|gsk|ghp|gho|ghs|ghu|r8)_[A-Za-z0-9_]{6,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{6,}"
    r"|\bxai-[A-Za-z0-9_\-]{6,}"
    r"|\bAIza[A-Za-z0-9_\-]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{6,}"
)
# name=value, name: value, "name": "value" for key-like names
_ASSIGNED = re.compile(
    r"(?i)(?P<name>\b(?:[a-z]+[_\-])?(?:api[_\-]?key|apikey|access[_\-]?token|auth[_\-]?token"
    r"|refresh[_\-]?token|secret|client[_\-]?secret|password|passwd|pwd|token|key|"
    r"authorization)\b)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<val>[^\s\"'&,;}<>]+)"
)
_TAG = re.compile(r"<[^<>]{0,2000}>")
_SCRIPT = re.compile(r"(?is)<(script|style)\b.*?</\1\s*>")
_TITLE = re.compile(r"(?is)<title[^>]*>(.*?)</title\s*>")
_H1 = re.compile(r"(?is)<h1[^>]*>(.*?)</h1\s*>")
_HTML_HINT = re.compile(r"(?i)</?(?:html|head|body|title|h1|p|div|pre|center|hr)\b")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")


def strip_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` part (unchanged when it has none)."""
    return _URL_USERINFO.sub(lambda m: m.group("scheme"), url, count=1)


def redact_url(url: str) -> str:
    """``url`` with its userinfo replaced by ``***`` (``http://***@host/v1``); the rest,
    key-like query values included, is passed through ``redact``."""
    return redact(url)


def _secret_forms(secrets: Iterable[str | None]) -> list[str]:
    """Each secret, its percent-decoded and -encoded forms; longest first, so a secret that
    contains another is replaced whole. Secrets shorter than 4 characters are ignored
    (replacing them would mangle ordinary text without protecting anything)."""
    forms: set[str] = set()
    for s in secrets:
        if not s:
            continue
        for form in (s, unquote(s), quote(s, safe="")):
            if len(form) >= 4:
                forms.add(form)
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with secrets replaced by ``***``.

    Replaced: each string in ``secrets`` (e.g. the configured API key, a URL's password; in
    raw, percent-decoded and percent-encoded form), the userinfo of every URL, ``Bearer``/
    ``Basic``/``token`` credentials, provider key formats (``sk-...``, ``hf_...``, ...)
    and the values of key-like assignments (``api_key=...``, ``"password": "..."``).
    """
    out = str(text)
    for form in _secret_forms(secrets):
        out = out.replace(form, MASK)
    out = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", out)
    out = _BEARER.sub(lambda m: m.group("kind") + m.group("sep") + MASK, out)
    out = _KEY_LIKE.sub(MASK, out)
    out = _ASSIGNED.sub(
        lambda m: m.group(0)
        if m.group("val") == MASK or m.group("val").lower() in ("bearer", "basic")
        else m.group("name") + m.group("sep") + MASK,
        out,
    )
    return out


def strip_html(text: str) -> str:
    """Readable text of an HTML page: its title (or first heading) when it has one, else the
    text between the tags; entities decoded."""
    for pattern in (_TITLE, _H1):
        found = pattern.search(text)
        if found and _TAG.sub(" ", found.group(1)).strip():
            return html.unescape(_TAG.sub(" ", found.group(1)))
    return html.unescape(_TAG.sub(" ", _SCRIPT.sub(" ", text)))


def looks_like_html(text: str) -> bool:
    """True when ``text`` is (part of) an HTML document rather than plain text or JSON."""
    head = text.lstrip()[:200].lower()
    return head.startswith(("<!doctype", "<html", "<head", "<body", "<?xml")) or bool(
        _HTML_HINT.search(text[:5000])
    )


def one_line(text: str, limit: int = 200) -> str:
    """``text`` as one printable line: HTML reduced to its text, ANSI escapes and control
    characters removed, whitespace collapsed, cut to ``limit`` characters (ending in ...)."""
    out = str(text)
    if looks_like_html(out):
        out = strip_html(out)
    out = _ANSI.sub("", out)
    out = _CONTROL.sub(" ", out)
    out = _SPACES.sub(" ", out).strip()
    if len(out) > limit:
        out = out[: max(0, limit - 3)].rstrip() + "..."
    return out
