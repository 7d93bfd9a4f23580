"""What the CJ service (upstream) writes, as data shapes: its outbox events (events), and the
contracts its consumers hold them to (contracts: the JSON Schemas shipped in contracts/)."""
