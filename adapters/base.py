"""What every adapter builds on: the normalized messages and the channel interface."""

from bot.messages import Channel, ChannelRegistry, Conversation, Inbound, Outbound

__all__ = ["Channel", "ChannelRegistry", "Conversation", "Inbound", "Outbound"]
