"""Retrieves ranked movies for a user: query embedding, then index search."""
