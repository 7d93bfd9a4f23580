"""What the CJ service (upstream) writes, as data shapes.

- events     its outbox rows: event types, aggregates, the envelope (docs/design.md §F6)
- contracts  the JSON Schemas its consumers hold them to (shipped in contracts/)
"""
