"""Our own user-space GPU drivers (amd/: over the Linux KFD interface)."""
