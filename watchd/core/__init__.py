"""The shared vocabulary: events, the runtime rules, jobs, actions' contract, counters, logging.

Everything else imports from here; nothing here imports a schema, YAML or HTTP library.
"""
