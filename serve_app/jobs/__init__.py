"""Jobs, whichever lane brought them: the one runner (claim, run, record, hand on) with its
leases, the service the queue side is handed, and the background work (webhooks, outbox,
retention) of the queue side."""
