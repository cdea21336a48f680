"""How each op moves channel ids during capture, one file per family of ops (vocab.py names them)."""
