"""What the CJ service (upstream) writes, as data shapes: its outbox events (events)."""
