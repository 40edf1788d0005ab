"""How good and how new the sprites are: the feature network, metrics, the memorization audit."""
