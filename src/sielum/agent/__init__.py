"""AgentService: what an enrolled device calls with its certificate (heartbeat, renewal)."""
