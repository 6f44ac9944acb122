"""Generated protobuf and gRPC stubs (scripts/generate.sh); do not edit."""
