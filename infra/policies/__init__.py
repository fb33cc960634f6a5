"""Custom checkov policies (loaded by checkov --external-checks-dir)."""
