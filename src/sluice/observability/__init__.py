"""Logging now; metrics, traces and health join here."""
