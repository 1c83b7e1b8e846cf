"""Running framepool's GPU checks on an offline GPU host (docs/gpu-host.md)."""
