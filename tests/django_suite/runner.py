"""A Django test runner that writes every test's outcome to a JSON file.

Set as ``TEST_RUNNER`` by :mod:`tests.django_suite.settings`; the file is named
by ``DJANGO_SUITE_RESULTS``. Parsing the text output instead would depend on
docstrings, subtests and the parallel runner's interleaving.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.test.runner import DiscoverRunner
from django.test.utils import iter_test_cases


def _test_id(test: Any) -> str:
    # A subtest's outcome counts for the test it belongs to.
    return str(getattr(test, "test_case", test).id())


class RecordingRunner(DiscoverRunner):
    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        # Every test, taken before running: a suite drops its tests as they run.
        self.test_ids = [test.id() for test in iter_test_cases(suite)]
        return super().run_suite(suite, **kwargs)

    def suite_result(self, suite: Any, result: Any, **kwargs: Any) -> Any:
        outcomes = dict.fromkeys(self.test_ids, "ok")
        details: dict[str, str] = {}
        kinds = (
            ("skipped", result.skipped),
            ("expected failure", result.expectedFailures),
            ("unexpected success", [(test, "") for test in result.unexpectedSuccesses]),
            ("failure", result.failures),
            ("error", result.errors),
        )
        for kind, entries in kinds:
            for test, detail in entries:
                outcomes[_test_id(test)] = kind
                if kind in ("failure", "error"):
                    details[_test_id(test)] = detail
        path = os.environ.get("DJANGO_SUITE_RESULTS")
        if path:
            with open(path, "w") as file:
                json.dump({"outcomes": outcomes, "details": details}, file, indent=0)
        return super().suite_result(suite, result, **kwargs)
