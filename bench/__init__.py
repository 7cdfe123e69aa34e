"""songscan benchmark tools (test-recording generator, accuracy and throughput runs)."""
