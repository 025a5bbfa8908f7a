"""The HTTP and WebSocket API (aiohttp), reading the registry and journal of one Service."""
