"""The embedded DeepSeek-V4 runtime (imported as `agentkit.runtime`)."""
