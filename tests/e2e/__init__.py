"""End-to-end tests: a real coordinator and real nodes on loopback, over mutual TLS."""
