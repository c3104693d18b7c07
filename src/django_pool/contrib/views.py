"""``pool_stats``: this process's pool stats as JSON, for health checks and dashboards.

Mount it with ``path("pool/", include("django_pool.contrib.urls"))``. The
answer is ``{"pid": <process id>, "<alias>": {<get_stats() of that alias>}, ...}``:
one entry per alias whose pool exists in the process that served the request
(an alias appears after its first query). Stats never contain a password (the
engine removes it from ``last_connection_error``), and no settings are added.

It is never open by default. A request is let in when either

* the setting ``DJANGO_POOL_STATS_TOKEN`` is a string of at least
  :data:`MIN_TOKEN_LENGTH` characters (surrounding whitespace, such as the
  newline a token file ends with, is not part of it) and the request carries
  ``Authorization: Bearer <that token>`` (for a load balancer or a
  monitoring job), or
* ``request.user`` is authenticated, active and has the permission named by the
  setting ``DJANGO_POOL_STATS_PERMISSION`` (``"app_label.codename"``); without
  that setting, only superusers. Without ``django.contrib.auth`` and its
  middleware there is no ``request.user`` and the request counts as anonymous.

Anything else gets 403 with a JSON ``error`` that says only that the stats
are restricted: not which permission or whether a token is set up, which
would tell an anonymous caller how to get in. Methods other than GET and
HEAD get 405. A token too short to resist guessing is refused by the system
check ``django_pool.E002`` (and by the view). Responses are marked ``Cache-Control:
no-store`` (Django's ``never_cache``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from ..backends.pools import get_stats

__all__ = ["pool_stats"]

TOKEN_SETTING = "DJANGO_POOL_STATS_TOKEN"
#: The shortest token accepted: 16 random characters (``secrets.token_urlsafe()``
#: makes 43).
MIN_TOKEN_LENGTH = 16
FORBIDDEN = (
    "pool stats are restricted: see django-pool's monitoring guide for how to "
    "allow a user or a monitoring job"
)
PERMISSION_SETTING = "DJANGO_POOL_STATS_PERMISSION"
ALLOWED_METHODS = ("GET", "HEAD")


@csrf_exempt  # type: ignore[untyped-decorator]  # read-only: other methods get 405
@never_cache  # type: ignore[untyped-decorator]
def pool_stats(request: HttpRequest) -> JsonResponse:
    """The stats of every pool of this process, by alias, plus ``"pid"``."""
    if request.method not in ALLOWED_METHODS:
        response = JsonResponse(
            {"error": f"method {request.method} not allowed; use GET or HEAD"}, status=405
        )
        response["Allow"] = ", ".join(ALLOWED_METHODS)
        return response
    token = _configured_token()
    permission = _configured_permission()
    if not (_token_matches(request, token) or _user_allowed(request, permission)):
        return JsonResponse({"error": FORBIDDEN}, status=403)
    return JsonResponse({"pid": os.getpid(), **get_stats()})


def _configured_token() -> str | None:
    """The token setting, stripped; None when unset or empty. Raises when unfit."""
    token = getattr(settings, TOKEN_SETTING, None)
    if token is None:
        return None
    if not isinstance(token, str):
        raise ImproperlyConfigured(f"{TOKEN_SETTING} must be a string, got {type(token).__name__}")
    token = token.strip()
    if token and len(token) < MIN_TOKEN_LENGTH:
        # The length only, never the value.
        raise ImproperlyConfigured(
            f"{TOKEN_SETTING} is {len(token)} characters long; use at least "
            f"{MIN_TOKEN_LENGTH} random ones (python -c 'import secrets; "
            "print(secrets.token_urlsafe())')"
        )
    return token or None


def check_stats_token(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``django_pool.E002``: ``DJANGO_POOL_STATS_TOKEN``, when set, is a usable token."""
    try:
        _configured_token()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), obj=TOKEN_SETTING, id="django_pool.E002")]
    return []


def _configured_permission() -> str | None:
    permission = getattr(settings, PERMISSION_SETTING, None)
    if permission is None or permission == "":
        return None
    if not isinstance(permission, str) or "." not in permission:
        raise ImproperlyConfigured(
            f"{PERMISSION_SETTING} must be a permission name 'app_label.codename', "
            f"got {permission!r}"
        )
    return permission


def _token_matches(request: HttpRequest, token: str | None) -> bool:
    if token is None:
        return False
    scheme, _, offered = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Digests first: equal lengths, so not even the token's length leaks.
    return hmac.compare_digest(_digest(offered.strip()), _digest(token))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _user_allowed(request: HttpRequest, permission: str | None) -> bool:
    user: Any = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not getattr(user, "is_active", False):
        return False
    if permission is None:
        return bool(getattr(user, "is_superuser", False))
    return bool(user.has_perm(permission))
