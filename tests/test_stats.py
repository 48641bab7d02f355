"""Counters: typed, in total and by rule, from any thread."""

from __future__ import annotations

import threading

from watchd.core.stats import Count, Counters


def test_a_count_adds_to_the_total_and_to_its_rule():
    counters = Counters()
    counters.add(Count.ACTIONS_FAILED, "ingest")
    counters.add(Count.ACTIONS_FAILED, "ingest", 2)
    counters.add(Count.ACTIONS_FAILED)
    counters.matched_by("ingest")
    assert counters.actions_failed == 4 and counters.matched == 1
    assert counters.of_rule("ingest") == {"actions_failed": 3, "matched": 1}
    assert counters.of_rule("other") == {}
    assert "by_rule" not in counters.summary()


def test_a_rule_a_reload_removed_is_forgotten_but_the_totals_keep_its_counts():
    counters = Counters()
    counters.add(Count.ACTIONS_OK, "gone")
    counters.add(Count.ACTIONS_OK, "kept")
    counters.keep_rules({"kept", "new"})
    assert counters.of_rule("gone") == {} and counters.of_rule("kept") == {"actions_ok": 1}
    assert counters.actions_ok == 2


def test_counts_from_many_threads_are_all_kept():
    counters = Counters()

    def count() -> None:
        for _ in range(10_000):
            counters.add(Count.ACTIONS_OK, "r")

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counters.actions_ok == 40_000 and counters.of_rule("r") == {"actions_ok": 40_000}
