"""Delivery of clause-change notices by email, Slack and signed webhooks; never touches the store."""
