"""Graph capture with torch.export and analyses over the captured graph."""
