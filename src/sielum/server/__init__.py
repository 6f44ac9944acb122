"""Server wiring: one grpc.server on two ports, the interceptor, logging and start-up."""
