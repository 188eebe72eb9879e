"""Pieces every geta package may import: the example inputs a model is called with, and mode handling."""
