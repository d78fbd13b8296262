"""HTTP routes of the gateway (thin: parse, call the service, format)."""
