"""Jobs, whichever lane brought them: the one runner (claim, run, record, hand on), the leases
that keep one delivery at a time on a job, and the service the queue side is handed."""
