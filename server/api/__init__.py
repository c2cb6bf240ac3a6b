"""The gRPC services: thin servicers that decode a request, make one core call and answer."""
