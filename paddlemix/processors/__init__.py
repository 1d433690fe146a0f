"""Chat templates and sample encoding (text to ids and labels, images to pixels)."""
