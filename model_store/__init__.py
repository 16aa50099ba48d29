"""The published-version layout shared by the trainer and both services."""
