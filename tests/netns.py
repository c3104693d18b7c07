"""A host of the tests' own, in a network namespace, whose link can be cut.

Some promises are about a network that loses packets, which a proxy cannot
fake: its kernel acknowledges what it receives and answers keepalive probes.
:class:`IsolatedHost` makes a network namespace joined to this one by a veth
pair (10.213.0.1 here, 10.213.0.2 there), runs a Python program in it, and
can take its end of the link down, so that nothing the program sends
arrives, nothing is acknowledged and no reset comes back. Only that namespace
is affected; the servers the tests use are untouched. It needs root (or
CAP_NET_ADMIN) and iproute2; :func:`unavailable_reason` says why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from types import TracebackType
from typing import Self

HOST_ADDRESS = "10.213.0.1"
ISOLATED_ADDRESS = "10.213.0.2"


def _ip(*args: str, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return subprocess.run(
        [*prefix, "ip", *args], capture_output=True, text=True, timeout=30, check=False
    )


def unavailable_reason() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"djp-probe-{uuid.uuid4().hex[:6]}"
    result = _ip("netns", "add", probe)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


class IsolatedHost:
    """A network namespace linked to this host by a veth pair; see the module docstring."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.namespace = f"djp-{tag}"
        self._outside, self._inside = f"djpo{tag}", f"djpi{tag}"

    def __enter__(self) -> Self:
        steps = [
            (None, ("netns", "add", self.namespace)),
            (None, ("link", "add", self._outside, "type", "veth", "peer", "name", self._inside)),
            (None, ("link", "set", self._inside, "netns", self.namespace)),
            (None, ("addr", "add", f"{HOST_ADDRESS}/30", "dev", self._outside)),
            (None, ("link", "set", self._outside, "up")),
            (self.namespace, ("addr", "add", f"{ISOLATED_ADDRESS}/30", "dev", self._inside)),
            (self.namespace, ("link", "set", self._inside, "up")),
            (self.namespace, ("link", "set", "lo", "up")),
        ]
        for namespace, args in steps:
            result = _ip(*args, namespace=namespace)
            if result.returncode != 0:
                self.__exit__(None, None, None)
                raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _ip("link", "del", self._outside)  # deletes both ends
        _ip("netns", "del", self.namespace)

    def cut(self) -> None:
        """Take the isolated host's link down: its packets go nowhere, silently."""
        result = _ip("link", "set", self._inside, "down", namespace=self.namespace)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())

    def python(self, code: str, env: dict[str, str]) -> subprocess.Popen[str]:
        """Run ``code`` with this interpreter inside the namespace; stdin/stdout are pipes."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
