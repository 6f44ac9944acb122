"""The gRPC transport: the interceptor every call passes, and the services registered."""
