"""RabbitMQ ingest with the Whisper-Local AMQP contract (exchanges, queues, retries, results).

Not built yet: it arrives with the AMQP issue, as plain-Python contract code here plus a thin
Serve deployment that calls the model pools through their handles.
"""
