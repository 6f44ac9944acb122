"""Enrolled devices on the server: device policy, and AgentService (heartbeat, renewal)."""
