"""Jobs, whichever lane brought them: their use cases (``service``: submit, cancel, quota;
admit and run), the one runner (claim, run, record, hand on) with its leases, and the queue
side's background work (webhooks, outbox, retention)."""
