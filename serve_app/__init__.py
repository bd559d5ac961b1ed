"""Speech-to-text service: Ray Serve around faster-whisper.

Data flows request in -> audio checked (`audio`) -> model runs (`transcriber`) -> result out
(`schemas`, `formats`). `deployments/` and `api/` are the Ray and HTTP edges around that core.
"""
