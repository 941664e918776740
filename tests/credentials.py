"""Fake credentials in the real formats (random, from a fixed seed: none was ever live, none is written in a file),
for the credential-pattern tests. Each is (label, token, a line of ordinary text that carries it)."""

from __future__ import annotations

import base64
import json
import random
import string

_R = random.Random(424242)
_AN = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"


def _rs(n: int, alphabet: str = _AN) -> str:
    return "".join(_R.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt() -> str:
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps({"sub": "user_" + _rs(8), "iat": 1760000000, "scope": "repo"}).encode())
    return f"{head}.{body}.{_b64url(bytes(_R.getrandbits(8) for _ in range(32)))}"


def _pem() -> str:
    body = "MIIEpAIBAAKCAQEA" + base64.b64encode(bytes(_R.getrandbits(8) for _ in range(1190))).decode()[16:]
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"


def github_token() -> str:
    """A classic GitHub personal access token: `ghp_` and 36 letters or digits."""
    return "ghp_" + _rs(36)


CREDENTIALS = [
    ("github classic token", github_token(), "export GITHUB_TOKEN={t}"),
    ("github fine-grained token", "github_pat_" + _rs(22) + "_" + _rs(59), "token: {t}"),
    ("github app token", "ghs_" + _rs(36), "the installation token is {t} (expires in 1h)"),
    ("aws access key id alone", "AKIA" + _rs(16, string.ascii_uppercase + "234567"), "aws_access_key_id = {t}"),
    ("anthropic key", "sk-ant-api03-" + _rs(93, _AN + "_-") + "AA", "ANTHROPIC_API_KEY={t}"),
    ("openai key", "sk-proj-" + _rs(74, _AN + "_-") + "T3BlbkFJ" + _rs(74, _AN + "_-"), "OPENAI_API_KEY={t}"),
    ("slack bot token", f"xoxb-{_R.randint(10**11, 10**12 - 1)}-{_R.randint(10**12, 10**13 - 1)}-{_rs(24)}",
     "SLACK_BOT_TOKEN={t}"),
    ("stripe live key", "sk_live_" + _rs(99), "STRIPE_SECRET_KEY={t}"),
    ("google api key", "AIza" + _rs(35, _AN + "_-"), "https://maps.googleapis.com/maps/api/geocode/json?key={t}"),
    ("gitlab token", "glpat-" + _rs(20, _AN + "_-"), "PRIVATE-TOKEN: {t}"),
    ("npm token", "npm_" + _rs(36), "//registry.npmjs.org/:_authToken={t}"),
    ("jwt", _jwt(), "Authorization: Bearer {t}"),
    ("private key", _pem(), "{t}"),
    ("database url with a password", "postgres://app:" + _rs(20) + "@db.internal:5432/app", "DATABASE_URL={t}"),
]


def secret_part(token: str) -> str:
    """A part of the token that must not be left after masking (a URL's password; a key's body; a token's end)."""
    if token.startswith("postgres://"):
        return token.split(":")[2].split("@")[0]
    return token.split("\n")[1] if "\n" in token else token[-12:]
