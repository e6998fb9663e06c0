"""The HTTP and WebSocket edge: validates requests, asks the actors over the bus, streams build events."""
