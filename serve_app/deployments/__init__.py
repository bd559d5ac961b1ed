"""Ray Serve edges: thin deployments around the plain-Python core, and the Ray side of the
transcription ports (``client``: the model pools and the Diarizer called by handle)."""
