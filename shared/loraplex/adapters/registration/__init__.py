"""Adapter registration over HTTP, shared by the adapter-store service and the gateway that
embeds it: validation of uploads and server paths, the registrar, the routes and their state."""
