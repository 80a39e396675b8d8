//! Multi-band arrays: a folder of `.npy` files or one safetensors file, with labels.
