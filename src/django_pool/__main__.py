"""``django-pool`` / ``python -m django_pool``: the package's commands.

There is one, ``demo``; a subcommand keeps room for more without changing how
this one is called.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="django-pool", description="django-pool: connection pooling for Django."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show where django-pool and Django's built-in pool differ, on real servers",
        description="Serve a small Django app under gunicorn and uvicorn with each way of "
        "handling database connections (no pooling, Django's built-in pool, "
        "django-db-connection-pool, django-pool) and measure the scenarios where they "
        "differ: an async view that awaits, a database restart under load, session state "
        "left behind, a leaked connection; then the throughput rows.",
    )
    from django_pool.demo import cli

    cli.add_arguments(demo)
    args = parser.parse_args(argv)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
