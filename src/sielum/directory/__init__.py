"""The DirectoryService protocol (v1/): stubs only."""
