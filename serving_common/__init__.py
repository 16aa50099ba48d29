"""Pieces both gRPC services share: logging, errors, server wiring."""
