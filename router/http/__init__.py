"""The HTTP edge: the app, auth, streams, and one module per API dialect over the one call."""
