"""``OPTIONS["pool"]``: read, check and turn into :class:`~django_pool.Pool` arguments.

The keys are Django's built-in pool's (psycopg_pool's) where they mean the same
thing, so moving from it is an ENGINE change only; keys that only make sense
for psycopg_pool's own implementation are accepted where they have a meaning
here and refused, with the reason, where they do not. Nothing is ignored.
``session_reset`` (see :mod:`django_pool.session`), ``release`` (see
:mod:`django_pool.backends.release`) and ``server_pooling`` (see
:mod:`django_pool.backends.server_pooling`) are the Django layer's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ..engine import Pool
from . import server_pooling as server_pooling_rules

#: Engine options a user may set, with their defaults (the engine's).
ENGINE_KEYS = (
    "min_size",
    "max_size",
    "timeout",
    "max_waiting",
    "max_lifetime",
    "max_idle",
    "reconnect_timeout",
    "validate_after",
    "num_workers",
    "leak_threshold",
    "configure",
    "reset",
    "name",
)
# psycopg_pool keys with a meaning here.
_CHECK = "check"  # a per-checkout health check: the engine pings every checkout
#: How returned connections get their session state cleaned: the choices, default first.
SESSION_RESET_CHOICES = ("detected", "always", "never")
_SESSION_RESET = "session_reset"
#: When a borrowed connection goes back: the choices, default first (see
#: :mod:`django_pool.backends.release`).
RELEASE_CHOICES = ("request", "transaction")
_RELEASE = "release"
_SERVER_POOLING = "server_pooling"
_LAYER_KEYS = (_SESSION_RESET, _RELEASE, _SERVER_POOLING)
# psycopg_pool keys that Django's pool sets itself, or that need psycopg_pool.
_REFUSED = {
    "kwargs": "connection arguments belong in OPTIONS itself, as without pooling",
    "connection_class": "the connection is made by Django's backend",
    "open": "the pool opens when the first connection is needed",
    "reconnect_failed": "failures are logged on the 'django_pool' logger and in get_stats()",
}


@dataclass(frozen=True)
class PoolOptions:
    """``OPTIONS["pool"]``, checked: the engine's arguments and the Django layer's own."""

    #: Keyword arguments for :class:`~django_pool.Pool`.
    engine: dict[str, Any]
    #: One of :data:`SESSION_RESET_CHOICES`.
    session_reset: str = SESSION_RESET_CHOICES[0]
    #: One of :data:`RELEASE_CHOICES`.
    release: str = RELEASE_CHOICES[0]
    #: One of :data:`~.server_pooling.SERVER_POOLING_CHOICES`.
    server_pooling: str | None = None
    #: The most connections the pool opens at once (``max_size`` or its default).
    max_size: int = 0

    @property
    def behind_transaction_pooler(self) -> bool:
        return self.server_pooling == "transaction"


def pool_options(
    value: Any, settings_dict: Mapping[str, Any], alias: str, vendor: str
) -> PoolOptions | None:
    """Return the checked options of a ``vendor`` backend, or None when pooling is off.

    Raises ImproperlyConfigured naming ``DATABASES[alias]['OPTIONS']['pool']``
    and the key at fault.
    """
    where = f"DATABASES[{alias!r}]['OPTIONS']['pool']"
    if value is None or value is False:
        return None
    if value is True:
        options: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        options = dict(value)
    else:
        raise ImproperlyConfigured(f"{where} must be True or a dict of options, got {value!r}")

    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            # Django's built-in pool's words first: code and tests look for them.
            f"Pooling doesn't support persistent connections. DATABASES[{alias!r}]"
            f"['CONN_MAX_AGE'] must be 0 with pooling, got {max_age!r}: connections go "
            "back to the pool at the end of each request instead of staying with a thread"
        )

    session_reset = options.pop(_SESSION_RESET, SESSION_RESET_CHOICES[0])
    if session_reset not in SESSION_RESET_CHOICES:
        raise ImproperlyConfigured(
            f"{where}: {_SESSION_RESET!r} must be one of "
            f"{', '.join(map(repr, SESSION_RESET_CHOICES))}, got {session_reset!r}"
        )
    release = options.pop(_RELEASE, RELEASE_CHOICES[0])
    if release not in RELEASE_CHOICES:
        raise ImproperlyConfigured(
            f"{where}: {_RELEASE!r} must be one of "
            f"{', '.join(map(repr, RELEASE_CHOICES))}, got {release!r}"
        )
    if release == "transaction" and session_reset != "detected":
        raise ImproperlyConfigured(
            f"{where}: 'release': 'transaction' needs 'session_reset': 'detected' (the "
            f"default), got {session_reset!r}: a session whose state is not tracked "
            "cannot be kept until the request ends"
        )
    server_pooling = options.pop(_SERVER_POOLING, None)
    server_pooling_rules.check_options(server_pooling, session_reset, settings_dict, where)
    if server_pooling == "transaction":
        server_pooling_rules.check_vendor(vendor, where)
    arguments: dict[str, Any] = {}
    if options.pop(_CHECK, None):  # psycopg_pool's check callable, or True
        arguments["validate_after"] = 0
    if settings_dict.get("CONN_HEALTH_CHECKS"):
        arguments.setdefault("validate_after", 0)
    for key, value in options.items():
        if key in _REFUSED:
            raise ImproperlyConfigured(f"{where}: {key!r} is not supported: {_REFUSED[key]}")
        if key not in ENGINE_KEYS:
            raise ImproperlyConfigured(
                f"{where}: unknown key {key!r}; valid keys: "
                f"{', '.join(sorted((*ENGINE_KEYS, _CHECK, *_LAYER_KEYS)))}"
            )
        if key in ("configure", "reset"):
            value = _callable(where, key, value)
        arguments[key] = value
    arguments.setdefault("name", alias)

    try:  # the engine checks types and ranges and names the key at fault
        checked = Pool(_never_called, open=False, **arguments)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None
    return PoolOptions(arguments, session_reset, release, server_pooling, checked.max_size)


def _callable(where: str, key: str, value: Any) -> Callable[[Any], None]:
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(f"{where}: {key!r} could not be imported: {exc}") from None
    if not callable(value):
        raise ImproperlyConfigured(
            f"{where}: {key!r} must be a callable or its dotted path, got {value!r}"
        )
    return value  # type: ignore[no-any-return]


def _never_called() -> None:
    raise AssertionError("a pool built only to check options never connects")
