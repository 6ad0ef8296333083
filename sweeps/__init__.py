"""Sweep specs, search spaces, samplers, frontier extraction and scaling laws."""
