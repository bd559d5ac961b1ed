"""The AMQP edge: the Whisper-Local RabbitMQ contract (``contract``, ``topology``), connecting
and settling every delivery (``transport``) and the two lanes consumed (``consumer``).

Plain Python: the Ray side is ``serve_app.deployments.ingest``, which hands it the job runner.
"""
