"""Account events: the outbox written in each change's transaction, and the relay that publishes it."""
