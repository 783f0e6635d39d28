"""Device meshes and the rules that place params and activations on them."""
