"""Tests of biofed.secagg."""
