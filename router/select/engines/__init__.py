"""Engines schedule pass 1 (read + score + write score parts); pass 2 is shared."""
