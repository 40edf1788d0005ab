"""Pure diffusion math and models: arrays and keys in, arrays out."""
