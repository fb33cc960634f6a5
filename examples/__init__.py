"""Examples of embedding residency-router."""
