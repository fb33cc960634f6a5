"""An example ASGI service that embeds one ResidencyRouter."""
