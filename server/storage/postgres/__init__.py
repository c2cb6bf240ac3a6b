"""The shared backend: PostgreSQL is the ordered, durable log; every instance replays it (see backend)."""
