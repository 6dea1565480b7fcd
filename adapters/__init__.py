"""Channels end users write from: Slack, Telegram and the web widget."""
