"""event → match: which rules fire for an event, the cheapest test first."""
