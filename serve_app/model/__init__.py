"""The model replica's work: what it is asked (``calls``), weights found offline, the Whisper
engine, how it decodes (``decoding``: batched across requests, packed, clipped, checked for
quality, or each request by itself), sentence segments, and chunk planning."""
