"""Pictures: grids and labels, the forward process, sprite sheets."""
