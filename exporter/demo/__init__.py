"""The zero-setup demo: an embedded PostgreSQL (embedded), batches planted as the CJ service
leaves them (scenarios), and the `demo` command that serves them (command)."""
