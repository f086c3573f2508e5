"""Typed tools and sandboxes (imported as `agentkit.tools`)."""
