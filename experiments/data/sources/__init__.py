"""Where sprites come from. Each source yields `Sprite` records for the TFDS builder."""
