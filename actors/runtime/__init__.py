"""The shared actor runtime: settings, logs, codec, bus connection, RPC and pipeline consumers, storage."""
