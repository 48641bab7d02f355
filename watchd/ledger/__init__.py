"""job → ledger: every queued job on disk until its actions end, and what each rule last saw."""
