"""The server process: wiring, worker supervisor, signals, metrics, the server certificate."""
