"""The domain's names, settings and file primitives, shared by every stage."""
