"""The poll core: what is read (watched, query), what it means (snapshot), when (scheduler)."""
