"""The poll core: what is read, what it means, and when.

- watched      the watched set: which batches a poll (and a remediation cycle) reads at all
- query        the poll's SQL (the watched rows of cj_batch_health, all or some by id, and the
               outbox facts) and `poll()`, one stateless full poll (the reference)
- snapshot     the rows of one poll -> an immutable Snapshot: parsing, exported set, aggregates
- changes      which batches changed since the last poll: the incremental poll's signals
- ledger       the kept rows of the watched batches with their aggregates and export order
- incremental  full and incremental polls: per-batch facts kept, re-read only where rows changed
- warnings     rate-limited warnings about what a poll found wrong in the data
- scheduler    the poll loop: polls and publishes on the ticker
- ticker       a job every N seconds on the monotonic clock, in a thread of its own
"""
