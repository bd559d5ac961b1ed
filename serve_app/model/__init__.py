"""The model replica's work: weights found offline, the Whisper engine, decoding windows batched
across requests (packed, clipped, checked for quality), sentence segments, and chunk planning."""
