-- Idempotency keys of queue messages (SWIM's optional `IdempotencyKey`), per queue: a message
-- whose key is here is not applied again, even when a Redis restored from an older snapshot
-- delivers it a second time under a new tag. Pruned by age and count (see the SWIM consumer).
CREATE TABLE queue_idempotency (
    queue TEXT NOT NULL,
    key   TEXT NOT NULL,
    tag   TEXT NOT NULL,   -- the tag of the message that applied it
    at    INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX queue_idempotency_at ON queue_idempotency (queue, at);
