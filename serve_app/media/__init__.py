"""Audio in: extension, size and duration checks, decoding to 16 kHz mono in an FFmpeg child
process, paths that come from outside, and the spool that keeps uploads until their job ends."""
