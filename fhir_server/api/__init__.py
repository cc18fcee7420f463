"""The HTTP layer, FastAPI only: routes map paths to interactions and render their responses."""
