"""HTTP client for the ASUSWRT 3006 web API (asus-router-api.md §1-§5).

Why it looks the way it does:

* Failures come back as HTTP 200 with an ``error_status`` JSON body, so every reply is
  decoded and checked (:func:`check_error_status`), never trusted by status code alone.
* Lockout (7) stops at once: no retry, no fallback login, the remaining time is reported.
  An expired/bad token (2) triggers exactly one fresh login and one resend.
* Login v1 (``login.cgi``, base64) is tried first; if the device gives no token and no
  error_status (a build without v1), the v2 challenge flow is used. A wrong password on v1
  is *not* retried through v2 (that would double the lockout count).
* The app User-Agent (``asusrouter-<Platform>-DUTUtil-<ver>``) skips the browser-only
  Referer/single-admin checks; a Referer is sent anyway.
* ``Logout.asp`` is called at the end, also after errors (``with AsusClient(...)``).
* Writes (``applyapp.cgi``) are POSTs and are never retried by the transport; the
  ``run_service`` echo must equal the requested ``rc_service``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets as pysecrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlencode

import requests

from labctl import __version__
from labctl.core.errors import ApiError, AuthError, LockedOutError, TransportError
from labctl.core.secrets import Secret

log = logging.getLogger("labctl.router.client")

APP_USER_AGENT = f"asusrouter-Linux-DUTUtil-{__version__}"
ERROR_NAMES = {
    1: "NOTOKEN", 2: "AUTHFAIL", 3: "ACCOUNTFAIL", 4: "NOREFERER", 5: "WEB_NOREFERER",
    6: "REFERERFAIL", 7: "LOGINLOCK", 8: "ISLOGOUT", 9: "NOLOGIN", 10: "WRONGCAPTCHA",
    11: "FORCELOCK",
}
HOOKS_PER_REQUEST = 40  # keep appGet.cgi URLs short


class TokenExpired(AuthError):
    """error_status 2: the session token is bad or expired (log in again once)."""


def _fmt_time(seconds: int | None) -> str:
    if seconds is None:
        return "an unknown time"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def check_error_status(obj: Any, endpoint: str) -> None:
    """Raise the labctl error for an ``error_status`` reply; return for anything else."""
    if not isinstance(obj, dict) or "error_status" not in obj:
        return
    try:
        code = int(str(obj["error_status"]).strip())
    except ValueError:
        raise ApiError(f"{endpoint}: unexpected error_status {obj['error_status']!r}",
                       endpoint=endpoint) from None
    name = ERROR_NAMES.get(code, "UNKNOWN")
    if code in (7, 11):
        remaining = obj.get("remaining_lock_time")
        try:
            secs: int | None = int(str(remaining)) if remaining not in (None, "") else None
        except ValueError:
            secs = None
        raise LockedOutError(
            f"the router has locked logins ({name}); try again in {_fmt_time(secs)}",
            remaining_seconds=secs,
            hint="too many failed logins; labctl stopped and will not retry into the lock. "
                 "Check the password, wait for the lock to expire, then run again")
    if code == 2:
        raise TokenExpired(f"{endpoint}: the session token was refused ({name})")
    if code == 3:
        raise AuthError("the router refused the user name or password (ACCOUNTFAIL)",
                        hint="check router.user and LABCTL_ROUTER_PASSWORD; after 5 failures "
                             "the router locks logins for 5 minutes")
    if code == 8:
        raise AuthError(f"{endpoint}: the session was logged out (ISLOGOUT)")
    if code == 9:
        raise AuthError("another administrator is logged in to the router (NOLOGIN)",
                        hint="log out of the router's web page, then run again")
    if code in (4, 5, 6):
        raise AuthError(f"{endpoint}: the router refused the request's Referer ({name})",
                        hint="use the app User-Agent (asusrouter-...-DUTUtil-...)")
    raise AuthError(f"{endpoint}: the router answered error_status {code} ({name})")


class AsusClient:
    """A logged-in conversation with one ASUS router. Use as a context manager."""

    def __init__(self, url: str, user: str, password: Secret, *,
                 session: requests.Session | None = None, login: str = "auto",
                 netns: str | None = None, allow_http: bool = False, timeout: float = 10.0,
                 retries: int = 2, user_agent: str = APP_USER_AGENT,
                 apply_encoding: str = "json") -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.password = password
        self.login_mode = login
        self.apply_encoding = apply_encoding
        if session is None:
            from labctl.transport.http import make_session

            session = make_session(self.url, user_agent=user_agent, retries=retries,
                                   timeout=timeout, netns=netns, allow_http=allow_http)
        self.session = session
        self.session.headers["User-Agent"] = user_agent
        self.session.headers["Referer"] = self.url + "/"
        self.token: str | None = None
        self.login_scheme: str | None = None
        self.requests_made = 0

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> AsusClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logout()

    # -- low level -----------------------------------------------------------------------
    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        self.requests_made += 1
        return self.session.request(method, f"{self.url}/{path}", **kw)

    @staticmethod
    def _json(resp: requests.Response, endpoint: str) -> Any:
        if resp.status_code >= 400:
            raise ApiError(f"{endpoint}: HTTP {resp.status_code} {resp.reason}",
                           status=resp.status_code, endpoint=endpoint,
                           hint="the router failed to handle the request")
        try:
            return resp.json()
        except ValueError:
            return None

    # -- login ---------------------------------------------------------------------------
    def login(self) -> None:
        if self.login_mode in ("auto", "v1"):
            ok = self._login_v1()
            if ok:
                return
            if self.login_mode == "v1":
                raise AuthError("login.cgi gave no token",
                                hint="this firmware may need the v2 login: set router.login: "
                                     "v2 (or auto)")
        self._login_v2()

    def _take_token(self, resp: requests.Response, obj: Any) -> bool:
        token = None
        if isinstance(obj, dict) and obj.get("asus_token"):
            token = str(obj["asus_token"])
        elif resp.cookies.get("asus_token"):
            token = resp.cookies.get("asus_token")
        elif resp.cookies.get("asus_s_token"):
            token = resp.cookies.get("asus_s_token")
        if not token:
            return False
        self.token = token
        self.session.cookies.set("asus_token", token)
        return True

    def _login_v1(self) -> bool:
        """True on success; False if this build has no v1 login (fall back to v2)."""
        cred = base64.b64encode(f"{self.user}:{self.password.reveal()}".encode()).decode()
        resp = self._send("POST", "login.cgi", data={"login_authorization": cred},
                          allow_redirects=False)
        obj = self._json(resp, "login.cgi")
        check_error_status(obj, "login.cgi")
        if self._take_token(resp, obj):
            self.login_scheme = "v1"
            return True
        log.info("login.cgi gave no token%s; trying the v2 (nonce) login",
                 " (the page points to login_v2.cgi)" if "login_v2" in resp.text else "")
        return False

    def _login_v2(self) -> None:
        cid = pysecrets.token_hex(5)
        resp = self._send("POST", "get_Nonce.cgi", data=json.dumps({"id": cid}),
                          headers={"Content-Type": "application/json"})
        if resp.status_code == 404:
            raise AuthError("this router has no v2 login (get_Nonce.cgi: HTTP 404)",
                            hint="it may only support login.cgi: set router.login: v1 or auto")
        obj = self._json(resp, "get_Nonce.cgi")
        check_error_status(obj, "get_Nonce.cgi")
        if not isinstance(obj, dict) or not obj.get("nonce"):
            raise ApiError("get_Nonce.cgi gave no nonce", endpoint="get_Nonce.cgi",
                           hint="this firmware may only support login.cgi: set router.login: v1")
        cnonce = pysecrets.token_hex(16)
        digest = hashlib.sha256(
            f"{self.user}:{obj['nonce']}:{self.password.reveal()}:{cnonce}".encode()).hexdigest()
        form = {"id": cid, "cnonce": cnonce, "login_authorization": digest,
                "login_captcha": "", "current_page": "Main_Login.asp", "next_page": "index.asp",
                "action_wait": "5", "group_id": "", "action_mode": "", "action_script": ""}
        resp = self._send("POST", "login_v2.cgi", data=form, allow_redirects=False)
        obj = self._json(resp, "login_v2.cgi")
        check_error_status(obj, "login_v2.cgi")
        if not self._take_token(resp, obj):
            raise AuthError("login_v2.cgi gave no token", hint="check the user and password")
        self.login_scheme = "v2"

    def logout(self) -> None:
        """Best effort: a failed logout must not hide the real outcome."""
        if not self.token:
            return
        try:
            self._send("GET", "Logout.asp", allow_redirects=False)
        except (TransportError, ApiError) as e:
            log.debug("logout failed: %s", e)
        finally:
            self.token = None
            self.session.cookies.clear()

    def _authed(self, method: str, path: str, **kw: Any) -> Any:
        """A request that needs the token: one re-login on error_status 2."""
        if not self.token:
            self.login()
        for attempt in (1, 2):
            resp = self._send(method, path, allow_redirects=False, **kw)
            obj = self._json(resp, path)
            try:
                check_error_status(obj, path)
            except TokenExpired:
                if attempt == 2:
                    raise
                log.info("%s: token refused; logging in again once", path)
                self.token = None
                self.session.cookies.clear()
                self.login()
                continue
            if obj is None:
                raise ApiError(f"{path}: the reply is not JSON", endpoint=path,
                               hint="is this an ASUSWRT router?")
            return obj
        raise AssertionError("unreachable")  # pragma: no cover

    # -- nvram ---------------------------------------------------------------------------
    def get_nvram(self, names: Iterable[str], *, ascii_keys: Iterable[str] = ()) -> dict[str, str]:
        """Read nvram values; ``ascii_keys`` go through ``nvram_char_to_ascii`` and are
        decoded (the UI's decodeURIComponent)."""
        names = list(dict.fromkeys(names))
        ascii_set = set(ascii_keys)
        out: dict[str, str] = {}
        for i in range(0, len(names), HOOKS_PER_REQUEST):
            chunk = names[i:i + HOOKS_PER_REQUEST]
            hooks = ";".join(f"nvram_char_to_ascii({n},{n})" if n in ascii_set
                             else f"nvram_get({n})" for n in chunk)
            obj = self._authed("GET", "appGet.cgi?" + urlencode({"hook": hooks}, quote_via=quote))
            if not isinstance(obj, dict):
                raise ApiError("appGet.cgi: unexpected reply", endpoint="appGet.cgi")
            for n in chunk:
                if n not in obj:
                    raise ApiError(f"appGet.cgi: the reply lacks {n}", endpoint="appGet.cgi",
                                   hint="the firmware may not support this nvram key")
                v = "" if obj[n] is None else str(obj[n])
                if n in ascii_set:
                    try:
                        v = unquote(v, errors="strict")
                    except UnicodeDecodeError:
                        raise ApiError(f"appGet.cgi: {n} is not valid percent-encoded UTF-8",
                                       endpoint="appGet.cgi") from None
                out[n] = v
        return out

    def apply(self, values: dict[str, str], rc_service: str) -> dict[str, Any]:
        """POST ``applyapp.cgi`` (action_mode=apply) and check the run_service echo."""
        payload = {"action_mode": "apply", "rc_service": rc_service, **values}
        if self.apply_encoding == "json":
            data: Any = quote(json.dumps(payload), safe="")
            headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
        else:
            data, headers = payload, {}
        obj = self._authed("POST", "applyapp.cgi", data=data, headers=headers)
        reply: dict[str, Any] = obj if isinstance(obj, dict) else {}
        echoed = reply.get("run_service")
        if echoed != rc_service:
            raise ApiError(f"applyapp.cgi: the router echoed run_service={echoed!r}, "
                           f"expected {rc_service!r}", endpoint="applyapp.cgi",
                           hint="the change may not have been applied")
        return reply
